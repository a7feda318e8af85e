//! Test support: real RSA keys, their JWKs, and RS256 signing, for unit and integration tests.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

const KEY_COUNT: usize = 3;
static KEYS: [OnceLock<RsaPrivateKey>; KEY_COUNT] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];

/// One of a few 2048-bit keys, generated once per test process.
pub fn key(index: usize) -> &'static RsaPrivateKey {
    KEYS[index % KEY_COUNT]
        .get_or_init(|| RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key generation"))
}

/// base64url without padding.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The public JWK of `key`, shaped like Keycloak's.
pub fn jwk(key: &RsaPrivateKey, kid: &str) -> Value {
    json!({
        "kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig",
        "n": b64(key.n().to_bytes_be()), "e": b64(key.e().to_bytes_be()),
    })
}

/// A compact JWS of `header` and `payload` signed with RS256 by key `key_index`.
pub fn sign(header: &Value, payload: &Value, key_index: usize) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(payload.to_string()));
    let digest = Sha256::digest(input.as_bytes());
    let signature = key(key_index).sign(Pkcs1v15Sign::new::<Sha256>(), &digest).expect("RS256 signing");
    format!("{input}.{}", b64(signature))
}

/// A signing key of any supported kind, for tokens of every algorithm.
pub enum SigningKey {
    Rsa(&'static RsaPrivateKey),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    P521(p521::ecdsa::SigningKey),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

/// A deterministic key of the family `alg` needs (`index` picks one of several).
pub fn signing_key(alg: crate::keys::alg::Algorithm, index: usize) -> SigningKey {
    use crate::keys::alg::{Curve, Family};
    let scalar = |size: usize| {
        // Small, non-zero and below every curve order; P-521's top byte must stay below 2.
        let mut bytes = vec![0u8; size];
        bytes[size - 1] = 1 + index as u8;
        bytes[size - 2] = 0x5a;
        bytes
    };
    match alg.family() {
        Family::Rsa => SigningKey::Rsa(key(index)),
        Family::Ec(Curve::P256) => SigningKey::P256(p256::ecdsa::SigningKey::from_slice(&scalar(32)).expect("P-256")),
        Family::Ec(Curve::P384) => SigningKey::P384(p384::ecdsa::SigningKey::from_slice(&scalar(48)).expect("P-384")),
        Family::Ec(Curve::P521) => SigningKey::P521(p521::ecdsa::SigningKey::from_slice(&scalar(66)).expect("P-521")),
        Family::Ed25519 => SigningKey::Ed25519(Box::new(ed25519_dalek::SigningKey::from_bytes(&[7 + index as u8; 32]))),
    }
}

impl SigningKey {
    /// The public JWK, with `alg` when given.
    pub fn jwk(&self, kid: &str, alg: Option<&str>) -> Value {
        let mut jwk = match self {
            SigningKey::Rsa(key) => {
                json!({"kty": "RSA", "n": b64(key.n().to_bytes_be()), "e": b64(key.e().to_bytes_be())})
            }
            SigningKey::P256(key) => ec_jwk("P-256", key.verifying_key().to_encoded_point(false).as_bytes()),
            SigningKey::P384(key) => ec_jwk("P-384", key.verifying_key().to_encoded_point(false).as_bytes()),
            SigningKey::P521(key) => {
                let verifying = p521::ecdsa::VerifyingKey::from(key);
                ec_jwk("P-521", verifying.to_encoded_point(false).as_bytes())
            }
            SigningKey::Ed25519(key) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key.verifying_key().to_bytes())})
            }
        };
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        if let Some(alg) = alg {
            jwk["alg"] = json!(alg);
        }
        jwk
    }

    /// The JWS signature of `input` with `alg` (raw `r || s` for ECDSA, as JOSE has it).
    pub fn sign_bytes(&self, alg: crate::keys::alg::Algorithm, input: &[u8]) -> Vec<u8> {
        use crate::keys::alg::Algorithm::*;
        use ed25519_dalek::Signer as _;
        use sha2::{Sha384, Sha512};
        match (self, alg) {
            (SigningKey::Rsa(key), Rs256) => key.sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(input)),
            (SigningKey::Rsa(key), Rs384) => key.sign(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(input)),
            (SigningKey::Rsa(key), Rs512) => key.sign(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(input)),
            (SigningKey::Rsa(key), Ps256) => {
                key.sign_with_rng(&mut rsa::rand_core::OsRng, rsa::Pss::new::<Sha256>(), &Sha256::digest(input))
            }
            (SigningKey::Rsa(key), Ps384) => {
                key.sign_with_rng(&mut rsa::rand_core::OsRng, rsa::Pss::new::<Sha384>(), &Sha384::digest(input))
            }
            (SigningKey::Rsa(key), Ps512) => {
                key.sign_with_rng(&mut rsa::rand_core::OsRng, rsa::Pss::new::<Sha512>(), &Sha512::digest(input))
            }
            (SigningKey::P256(key), Es256) => Ok(p256::ecdsa::Signature::to_bytes(&key.sign(input)).to_vec()),
            (SigningKey::P384(key), Es384) => Ok(p384::ecdsa::Signature::to_bytes(&key.sign(input)).to_vec()),
            (SigningKey::P521(key), Es512) => Ok(p521::ecdsa::Signature::to_bytes(&key.sign(input)).to_vec()),
            (SigningKey::Ed25519(key), EdDsa) => Ok(key.sign(input).to_bytes().to_vec()),
            _ => panic!("a {alg} signature needs another kind of key"),
        }
        .expect("signing")
    }

    /// A compact JWS of `header` (its `alg` is set to `alg`) and `payload`.
    pub fn sign_token(&self, alg: crate::keys::alg::Algorithm, header: &Value, payload: &Value) -> String {
        let mut header = header.clone();
        header["alg"] = json!(alg.name());
        let input = format!("{}.{}", b64(header.to_string()), b64(payload.to_string()));
        let signature = self.sign_bytes(alg, input.as_bytes());
        format!("{input}.{}", b64(signature))
    }
}

fn ec_jwk(crv: &str, point: &[u8]) -> Value {
    let coordinates = &point[1..];
    let (x, y) = coordinates.split_at(coordinates.len() / 2);
    json!({"kty": "EC", "crv": crv, "x": b64(x), "y": b64(y)})
}
