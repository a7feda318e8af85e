//! Signature verification: picks the issuer's keys that may verify the token's algorithm and
//! checks the signature with one of two backends, the host's (`keys::host_crypto`, Envoy's
//! BoringSSL) or the VM's own (`PublicKey::verify_in_vm`).
//!
//! jwt-compact's `Algorithm` trait is not used: it needs a signing half and a key type per call,
//! and its validation path would deserialize the claims a second time.

use crate::keys::alg::{Algorithm, AlgorithmSet};
use crate::keys::host_crypto::HostCrypto;
use crate::keys::jwks::KeySet;

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// No key in the set has the token's `kid` and accepts its `alg`.
    KeyNotFound,
    /// A key was found and the signature does not verify with it.
    SignatureInvalid,
}

impl VerifyError {
    pub fn code(self) -> &'static str {
        match self {
            VerifyError::KeyNotFound => "jwks_kid_not_found",
            VerifyError::SignatureInvalid => "jwt_signature_invalid",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            VerifyError::KeyNotFound => "Jwks doesn't have key to match kid or alg from Jwt",
            VerifyError::SignatureInvalid => "Jwt verification fails",
        }
    }
}

/// `signatureBackend`: may the host verify signatures?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignatureBackend {
    /// The host's `verify_signature` for each algorithm once its check passes, the VM for the rest.
    #[default]
    Auto,
    /// Everything in the VM (for hosts whose foreign function misbehaves, and for measuring).
    Vm,
}

/// Which backend verifies which algorithm, for one VM.
#[derive(Debug, Default)]
pub struct Verifier {
    /// The host's verification, for the algorithms whose check passed; `None` keeps every
    /// algorithm in the VM (`signatureBackend: vm`).
    host: Option<HostCrypto>,
}

impl Verifier {
    /// Everything verified inside the VM.
    pub fn in_vm() -> Verifier {
        Verifier { host: None }
    }

    /// The host verifies what its checks show it can; the VM verifies the rest.
    pub fn with_host(host: HostCrypto) -> Verifier {
        Verifier { host: Some(host) }
    }

    /// The algorithms the host verifies (those whose check has passed so far).
    pub fn host_algorithms(&self) -> AlgorithmSet {
        self.host.as_ref().map_or(AlgorithmSet::NONE, HostCrypto::algorithms)
    }

    /// The host checks made since the last call (`HostCrypto::take_findings`).
    pub fn take_host_findings(&self) -> Vec<(Algorithm, Option<String>)> {
        self.host.as_ref().map(HostCrypto::take_findings).unwrap_or_default()
    }

    /// Verifies `signature` over `message` (the JWS signing input) with a key of `keys` that
    /// `KeySet::candidates` offers for `kid` and `alg`. The algorithm was allow-listed before;
    /// binding it to the key happens there, before any key is used.
    pub fn verify(
        &self,
        keys: &KeySet,
        kid: Option<&str>,
        alg: Algorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), VerifyError> {
        let mut found_key = false;
        for candidate in keys.candidates(kid, alg) {
            found_key = true;
            let host_answer = self.host.as_ref().and_then(|host| host.verify(alg, &candidate.key, message, signature));
            let verified = match host_answer {
                Some(verified) => verified,
                None => candidate.key.verify_in_vm(alg, message, signature),
            };
            if verified {
                return Ok(());
            }
        }
        if found_key {
            Err(VerifyError::SignatureInvalid)
        } else {
            Err(VerifyError::KeyNotFound)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::jwks;
    use crate::testkeys;
    use serde_json::json;

    fn key_set(kids: &[(&str, usize)]) -> KeySet {
        let keys: Vec<_> = kids.iter().map(|(kid, index)| testkeys::jwk(testkeys::key(*index), kid)).collect();
        jwks::parse(json!({ "keys": keys }).to_string().as_bytes()).expect("valid").key_set
    }

    fn verify_rs256(keys: &KeySet, kid: Option<&str>, input: &[u8], signature: &[u8]) -> Result<(), VerifyError> {
        Verifier::in_vm().verify(keys, kid, Algorithm::Rs256, input, signature)
    }

    fn split(token: &str) -> (String, Vec<u8>) {
        let parsed = crate::authn::jwt::parse(token).expect("parses");
        (parsed.signing_input.to_string(), parsed.signature)
    }

    #[test]
    fn accepts_the_right_key_and_rejects_everything_else() {
        let keys = key_set(&[("a", 0), ("b", 1)]);
        let token = testkeys::sign(&json!({"alg": "RS256", "kid": "b"}), &json!({"iss": "i"}), 1);
        let (input, signature) = split(&token);
        assert_eq!(verify_rs256(&keys, Some("b"), input.as_bytes(), &signature), Ok(()));
        // Without a kid every key is tried.
        assert_eq!(verify_rs256(&keys, None, input.as_bytes(), &signature), Ok(()));
        assert_eq!(verify_rs256(&keys, Some("a"), input.as_bytes(), &signature), Err(VerifyError::SignatureInvalid));
        assert_eq!(verify_rs256(&keys, Some("zz"), input.as_bytes(), &signature), Err(VerifyError::KeyNotFound));
        let tampered = format!("{input}x");
        assert_eq!(verify_rs256(&keys, Some("b"), tampered.as_bytes(), &signature), Err(VerifyError::SignatureInvalid));
        assert_eq!(
            verify_rs256(&keys, Some("b"), input.as_bytes(), &signature[1..]),
            Err(VerifyError::SignatureInvalid)
        );
        assert_eq!(verify_rs256(&keys, Some("b"), input.as_bytes(), &[]), Err(VerifyError::SignatureInvalid));
    }
}
