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
