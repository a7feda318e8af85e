//! ECDSA keys (P-256, P-384, P-521) from JWKs, and ES256/ES384/ES512 verification inside the VM
//! with RustCrypto's curve crates.
//!
//! A point is checked to be on its curve when the key set is loaded (an off-curve point is the
//! invalid-curve attack's way in), and a signature must be the JOSE raw `r || s` of exactly the
//! curve's size: a DER signature, a short one or a padded one is refused, never reinterpreted.

use crate::keys::alg::{Curve, HashAlg};
use crate::keys::der;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use std::fmt;

/// An EC public key, checked and prepared for verification.
#[derive(Clone)]
pub struct EcKey {
    curve: Curve,
    /// The uncompressed SEC1 point `04 || x || y`.
    point: Vec<u8>,
    verifier: Verifier,
}

#[derive(Clone)]
enum Verifier {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    P521(p521::ecdsa::VerifyingKey),
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
        // `from_sec1_bytes` decodes the point and checks the curve equation (and refuses the
        // identity), which is the validation RFC 8422/SP 800-56A asks for public keys.
        let verifier = match curve {
            Curve::P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).map(Verifier::P256),
            Curve::P384 => p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).map(Verifier::P384),
            Curve::P521 => p521::ecdsa::VerifyingKey::from_sec1_bytes(&point).map(Verifier::P521),
        }
        .map_err(|_| EcKeyError::NotOnCurve)?;
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
        match self.verifier {
            Verifier::P256(_) => p256::ecdsa::Signature::from_slice(signature).is_ok(),
            Verifier::P384(_) => p384::ecdsa::Signature::from_slice(signature).is_ok(),
            Verifier::P521(_) => p521::ecdsa::Signature::from_slice(signature).is_ok(),
        }
    }

    /// Verifies a raw `r || s` signature over a digest computed with `self.hash()`. `r` and `s`
    /// must be in [1, n−1] (the curve crates check it); high `s` is accepted, as in every JOSE
    /// library and BoringSSL: JWS has no malleability rule. (So whoever holds a valid ES* token
    /// can make a second, different token text that verifies, with `n − s`: replay checks must
    /// not compare token text; docs/security.md says so.)
    pub fn verify_prehash(&self, digest: &[u8], signature: &[u8]) -> bool {
        if signature.len() != 2 * self.curve.size() || digest.len() != self.hash().output_len() {
            return false;
        }
        match &self.verifier {
            Verifier::P256(key) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify_prehash(digest, &signature).is_ok()),
            Verifier::P384(key) => p384::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify_prehash(digest, &signature).is_ok()),
            Verifier::P521(key) => p521::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify_prehash(digest, &signature).is_ok()),
        }
    }
}
