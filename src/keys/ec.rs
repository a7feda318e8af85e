//! ECDSA keys (P-256, P-384, P-521) from JWKs, and ES256/ES384/ES512 verification inside the VM
//! (the arithmetic is `keys::ecdsa`).
//!
//! A point is checked to be on its curve when the key set is loaded (an off-curve point is the
//! invalid-curve attack's way in), and a signature must be the JOSE raw `r || s` of exactly the
//! curve's size: a DER signature, a short one or a padded one is refused, never reinterpreted.

use crate::keys::alg::{Curve, HashAlg};
use crate::keys::der;
use crate::keys::ecdsa::{CurveId, PublicKey};
use std::fmt;

/// An EC public key, checked and prepared for verification.
#[derive(Clone)]
pub struct EcKey {
    curve: Curve,
    /// The uncompressed SEC1 point `04 || x || y`.
    point: Vec<u8>,
    verifier: PublicKey,
}

impl PartialEq for EcKey {
    fn eq(&self, other: &EcKey) -> bool {
        self.curve == other.curve && self.point == other.point
    }
}

impl Eq for EcKey {}

impl fmt::Debug for EcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EcKey({})", self.curve.name())
    }
}

/// Why a JWK's coordinates do not make a usable EC key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcKeyError {
    /// `x` or `y` is not exactly the curve's coordinate size (RFC 7518 §6.2.1.2).
    CoordinateSize,
    /// The point is not on the curve (or is the identity).
    NotOnCurve,
}

impl fmt::Display for EcKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EcKeyError::CoordinateSize => f.write_str("x and y must each be the full coordinate size of the curve"),
            EcKeyError::NotOnCurve => f.write_str("the point is not on the curve"),
        }
    }
}

impl EcKey {
    /// The key with affine coordinates `x` and `y` (big-endian, full size) on `curve`.
    pub fn from_coordinates(curve: Curve, x: &[u8], y: &[u8]) -> Result<EcKey, EcKeyError> {
        if x.len() != curve.size() || y.len() != curve.size() {
            return Err(EcKeyError::CoordinateSize);
        }
        let point = [&[0x04u8][..], x, y].concat();
        // Coordinates below p and on the curve (the identity has no affine form), the validation
        // RFC 8422/SP 800-56A ask for public keys.
        let id = match curve {
            Curve::P256 => CurveId::P256,
            Curve::P384 => CurveId::P384,
            Curve::P521 => CurveId::P521,
        };
        let verifier = PublicKey::from_affine(id, x, y).ok_or(EcKeyError::NotOnCurve)?;
        Ok(EcKey { curve, point, verifier })
    }

    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// `x` and `y`, for writing the key back out as a JWK.
    pub fn coordinates(&self) -> (&[u8], &[u8]) {
        let coordinates = self.point.get(1..).unwrap_or_default();
        coordinates.split_at(coordinates.len() / 2)
    }

    /// DER SubjectPublicKeyInfo, as Envoy's `verify_signature` takes keys.
    pub fn spki(&self) -> Vec<u8> {
        der::ec_spki(self.curve, &self.point)
    }

    /// The hash each curve is used with in JOSE.
    pub fn hash(&self) -> HashAlg {
        match self.curve {
            Curve::P256 => HashAlg::Sha256,
            Curve::P384 => HashAlg::Sha384,
            Curve::P521 => HashAlg::Sha512,
        }
    }

    /// Whether `signature` is a raw `r || s` of this curve's size with `r` and `s` in [1, n − 1].
    pub fn signature_in_range(&self, signature: &[u8]) -> bool {
        let (r, s) = self.split(signature);
        self.verifier.signature_in_range(r, s)
    }

    /// Verifies a raw `r || s` signature over a digest computed with `self.hash()`. `r` and `s`
    /// must be in [1, n−1]; high `s` is accepted, as in every JOSE
    /// library and BoringSSL: JWS has no malleability rule. (So whoever holds a valid ES* token
    /// can make a second, different token text that verifies, with `n − s`: replay checks must
    /// not compare token text; docs/security.md says so.)
    pub fn verify_prehash(&self, digest: &[u8], signature: &[u8]) -> bool {
        if signature.len() != 2 * self.curve.size() || digest.len() != self.hash().output_len() {
            return false;
        }
        let (r, s) = self.split(signature);
        self.verifier.verify(digest, r, s)
    }

    /// `r` and `s` of a raw signature; a signature of the wrong length gives halves that are not
    /// the curve's size, which every check refuses.
    fn split<'a>(&self, signature: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        if signature.len() == 2 * self.curve.size() {
            signature.split_at(self.curve.size())
        } else {
            (&[], &[])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::alg::Algorithm;
    use crate::testkeys;
    use base64::Engine as _;

    fn key_of(jwk: &serde_json::Value, curve: Curve) -> EcKey {
        let coordinate =
            |name: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
        EcKey::from_coordinates(curve, &coordinate("x"), &coordinate("y")).unwrap()
    }

    /// `n − s` for a big-endian `s` of the curve's size (the other valid signature).
    fn negate(order: &[u8], s: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; s.len()];
        let mut borrow = 0i16;
        for i in (0..s.len()).rev() {
            let d = i16::from(order[i]) - i16::from(s[i]) - borrow;
            borrow = i16::from(d < 0);
            out[i] = d.rem_euclid(256) as u8;
        }
        out
    }

    #[test]
    fn agrees_with_rustcrypto_signatures_on_every_curve() {
        let orders: [(Algorithm, Curve, &str); 3] = [
            (Algorithm::Es256, Curve::P256, "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551"),
            (Algorithm::Es384, Curve::P384, "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973"),
            (Algorithm::Es512, Curve::P521, "01fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409"),
        ];
        for (alg, curve, order_hex) in orders {
            let order: Vec<u8> = (0..order_hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&order_hex[i..i + 2], 16).unwrap())
                .collect();
            for index in 0..4 {
                let signer = testkeys::signing_key(alg, index);
                let key = key_of(&signer.jwk("k", None), curve);
                let other = key_of(&testkeys::signing_key(alg, index + 10).jwk("k", None), curve);
                for round in 0..6u8 {
                    let message = vec![round; 40 + usize::from(round)];
                    let signature = signer.sign_bytes(alg, &message);
                    let digest = key.hash().digest(&[&message]);
                    assert!(key.verify_prehash(&digest, &signature), "{alg} key {index} round {round}");
                    assert!(!other.verify_prehash(&digest, &signature), "{alg}: another key");
                    let size = curve.size();
                    // High s (n − s) verifies too: JWS has no malleability rule.
                    let high = [&signature[..size], &negate(&order, &signature[size..])].concat();
                    assert!(key.verify_prehash(&digest, &high), "{alg}: n − s");
                    for flip in [0, size - 1, size, 2 * size - 1] {
                        let mut bad = signature.clone();
                        bad[flip] ^= 0x01;
                        assert!(!key.verify_prehash(&digest, &bad), "{alg}: bit flipped at {flip}");
                    }
                    let mut wrong_digest = digest.clone();
                    wrong_digest[0] ^= 0x80;
                    assert!(!key.verify_prehash(&wrong_digest, &signature), "{alg}: other digest");
                    // r = n or s = n (out of range) and zero halves are refused before any arithmetic.
                    let r_is_n = [&order[..], &signature[size..]].concat();
                    assert!(!key.signature_in_range(&r_is_n) && !key.verify_prehash(&digest, &r_is_n));
                    let zero_s = [&signature[..size], &vec![0u8; size][..]].concat();
                    assert!(!key.signature_in_range(&zero_s) && !key.verify_prehash(&digest, &zero_s));
                    assert!(key.signature_in_range(&signature));
                    assert!(!key.verify_prehash(&digest, &signature[1..]), "{alg}: short");
                }
            }
        }
    }
}
