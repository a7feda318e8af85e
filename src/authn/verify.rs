//! Signature verification: checks an RS256 signature against the issuer's keys.
//!
//! The RSA arithmetic is `keys::rsa` (keys prepared at JWKS load), not jwt-compact's `Algorithm`
//! trait: jwt-compact still parses the token and its claims (`jwt.rs`), but its `Algorithm` needs a
//! signing half and a key type per call, and its validation path would deserialize the claims a
//! second time. Here the signing input is hashed once (by the caller, who also keys the token cache
//! with that digest) and tried against every candidate key.

use crate::keys::jwks::KeySet;
use sha2::{Digest, Sha256};

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// No key in the set has the token's `kid`.
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

/// Verifies an RS256 (RSASSA-PKCS1-v1_5 with SHA-256) signature over `signing_input` with the key
/// named by `kid`, or with any key when the token names none.
pub fn verify_rs256(
    keys: &KeySet,
    kid: Option<&str>,
    signing_input: &[u8],
    signature: &[u8],
) -> Result<(), VerifyError> {
    verify_rs256_digest(keys, kid, &Sha256::digest(signing_input), signature)
}

/// The same, given the SHA-256 digest of the signing input (the caller hashed it already).
pub fn verify_rs256_digest(
    keys: &KeySet,
    kid: Option<&str>,
    signing_input_digest: &[u8],
    signature: &[u8],
) -> Result<(), VerifyError> {
    let mut found_key = false;
    for candidate in keys.candidates(kid) {
        found_key = true;
        // A signature must be exactly as long as the modulus (RFC 8017 §8.2.2 step 1).
        if signature.len() != candidate.key.size() {
            continue;
        }
        if candidate.key.verify_sha256_digest(signing_input_digest, signature) {
            return Ok(());
        }
    }
    if found_key {
        Err(VerifyError::SignatureInvalid)
    } else {
        Err(VerifyError::KeyNotFound)
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
