//! A verification key of any supported kind, and which algorithms it may verify.

use crate::keys::alg::{Algorithm, Family};
use crate::keys::der;
use crate::keys::ec::EcKey;
use crate::keys::ed25519::Ed25519Key;
use crate::keys::rsa::RsaVerifyKey;

/// A public key from a JWK, checked and prepared when the key set is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    Rsa(RsaVerifyKey),
    Ec(EcKey),
    Ed25519(Ed25519Key),
}

impl PublicKey {
    /// The family of algorithms this key belongs to: RSA keys serve RS* and PS*, an EC key only
    /// the ES* of its curve, an Ed25519 key only EdDSA.
    pub fn family(&self) -> Family {
        match self {
            PublicKey::Rsa(_) => Family::Rsa,
            PublicKey::Ec(key) => Family::Ec(key.curve()),
            PublicKey::Ed25519(_) => Family::Ed25519,
        }
    }

    /// DER SubjectPublicKeyInfo for the host's `verify_signature` (Ed25519 has no use for one:
    /// the host cannot verify it).
    pub fn spki(&self) -> Option<Vec<u8>> {
        match self {
            PublicKey::Rsa(key) => Some(der::rsa_spki(&key.modulus_be_bytes(), &key.exponent_be_bytes())),
            PublicKey::Ec(key) => Some(key.spki()),
            PublicKey::Ed25519(_) => None,
        }
    }

    /// Verifies `signature` with `alg` inside the VM. False for an algorithm of another family:
    /// callers bind keys to algorithms first, and this refuses again rather than trust them.
    #[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
    pub fn verify_in_vm(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        if self.family() != alg.family() {
            return false;
        }
        let hash = alg.hash();
        match (self, alg, hash) {
            (PublicKey::Rsa(key), Algorithm::Rs256 | Algorithm::Rs384 | Algorithm::Rs512, Some(hash)) => {
                key.verify_pkcs1(hash, &hash.digest(&[message]), signature)
            }
            (PublicKey::Rsa(key), Algorithm::Ps256 | Algorithm::Ps384 | Algorithm::Ps512, Some(hash)) => {
                key.verify_pss(hash, &hash.digest(&[message]), signature)
            }
            (PublicKey::Ec(key), _, Some(hash)) => key.verify_prehash(&hash.digest(&[message]), signature),
            (PublicKey::Ed25519(key), Algorithm::EdDsa, None) => key.verify(message, signature),
            _ => false,
        }
    }
}
