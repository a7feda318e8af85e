//! Ed25519 keys (JWK `kty: OKP`, `crv: Ed25519`, RFC 8037) and EdDSA verification inside the VM.
//!
//! Envoy's `verify_signature` cannot verify Ed25519, so this is the only backend for it.

use std::fmt;

/// An Ed25519 public key whose encoding decompresses to a curve point.
#[derive(Clone, PartialEq, Eq)]
pub struct Ed25519Key(ed25519_dalek::VerifyingKey);

impl fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ed25519Key")
    }
}

impl Ed25519Key {
    /// The key from a JWK's `x`: 32 bytes that decode to a point not of small order (such a key
    /// can never pass `verify_strict`, so it is refused at load, with the reason, rather than
    /// kept); `None` otherwise.
    pub fn from_bytes(x: &[u8]) -> Option<Ed25519Key> {
        let bytes: &[u8; 32] = x.try_into().ok()?;
        ed25519_dalek::VerifyingKey::from_bytes(bytes).ok().filter(|key| !key.is_weak()).map(Ed25519Key)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Verifies a 64-byte signature over `message`. `verify_strict`: besides refusing a
    /// non-canonical `S` (which plain verification does too), it refuses small-order keys and
    /// `R` values, with which one signature can verify for many messages — RFC 8032 leaves the
    /// choice to the verifier, and the strict reading is the safe one for authentication.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else { return false };
        self.0.verify_strict(message, &signature).is_ok()
    }
}
