//! Test support: the one fake of each host service the core reads, for unit, integration and
//! fuzz tests alike (so that they cannot drift apart in what they assume of Envoy).

use crate::ids::ProviderId;
use crate::keys::cache::{CasMismatch, SharedStore};
use crate::keys::host_crypto::{ForeignCallError, ForeignFunction};
use crate::keys::{KeySet, KeyState, KeyStore};
use std::collections::HashMap;

/// Envoy's shared data, as its `SharedData` keeps it: one global counter hands out
/// compare-and-swap tokens; a write with a stale token fails; a write to a missing key, or without
/// a token, always succeeds.
#[derive(Debug, Default)]
pub struct MemoryStore {
    values: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    /// Successful writes so far, for tests that count compare-and-swap rounds.
    pub writes: usize,
}

impl MemoryStore {
    /// Every key written so far, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.values.get(key).cloned()
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        if let (Some((_, current)), Some(cas)) = (self.values.get(key), cas) {
            if *current != cas {
                return Err(CasMismatch);
            }
        }
        self.next_cas += 1;
        self.writes += 1;
        self.values.insert(key.to_string(), (value.to_vec(), self.next_cas));
        Ok(())
    }
}

/// A key store with a fixed answer per provider: `Some(keys)` is ready (version 0), `None` is
/// pending, and a provider past the end is unavailable.
#[derive(Debug, Default)]
pub struct FixedKeys(pub Vec<Option<KeySet>>);

impl KeyStore for FixedKeys {
    fn key_state(&self, provider: ProviderId, _kid: Option<&str>) -> KeyState<'_> {
        match self.0.get(provider.index()) {
            Some(Some(keys)) => KeyState::Ready(keys),
            Some(None) => KeyState::Pending,
            None => KeyState::Unavailable,
        }
    }

    fn keys_version(&self, provider: ProviderId) -> Option<u64> {
        self.0.get(provider.index())?.as_ref().map(|_| 0)
    }
}

/// A host without foreign functions (older Envoy, other Proxy-Wasm hosts).
#[derive(Debug, Default)]
pub struct NoForeignFunctions;

impl ForeignFunction for NoForeignFunctions {
    fn call(&self, _name: &str, _arguments: &[u8]) -> Result<Vec<u8>, ForeignCallError> {
        Err(ForeignCallError::NotFound)
    }
}

/// Envoy's `verify_signature` (source/extensions/common/wasm/foreign.cc and
/// source/common/crypto/utility_impl.cc) rebuilt on RustCrypto: the SPKI is parsed as BoringSSL's
/// `EVP_parse_public_key` would, RSA is PKCS#1 v1.5 only (no padding option), ECDSA takes DER
/// signatures, Ed25519 keys fail at "initialize digest verify", and a bad signature is
/// `result: false` with an error text, as Envoy answers it. `calls` counts the calls.
#[derive(Debug, Default)]
pub struct EnvoyVerifySignature {
    pub calls: std::cell::Cell<usize>,
}

impl ForeignFunction for EnvoyVerifySignature {
    fn call(&self, name: &str, arguments: &[u8]) -> Result<Vec<u8>, ForeignCallError> {
        if name != crate::keys::host_crypto::FUNCTION {
            return Err(ForeignCallError::NotFound);
        }
        self.calls.set(self.calls.get() + 1);
        let fields = decode_fields(arguments).ok_or(ForeignCallError::Failed("BadArgument".into()))?;
        let field = |number: u8| fields.iter().find(|(n, _)| *n == number).map(|(_, bytes)| bytes.as_slice());
        let (Some(hash), Some(key), signature, text) =
            (field(1), field(2), field(3).unwrap_or_default(), field(4).unwrap_or_default())
        else {
            return Err(ForeignCallError::Failed("BadArgument".into()));
        };
        let hash = String::from_utf8_lossy(hash).to_ascii_lowercase();
        let (verified, error) = match envoy_verify(&hash, key, signature, text) {
            Ok(true) => (true, String::new()),
            Ok(false) => (false, "Failed to verify digest. Error code: 0".to_string()),
            Err(error) => (false, error.to_string()),
        };
        let mut reply = Vec::new();
        if verified {
            reply.extend([0x08, 0x01]);
        }
        if !error.is_empty() {
            reply.push(0x12);
            reply.push(error.len() as u8);
            reply.extend(error.as_bytes());
        }
        Ok(reply)
    }
}

fn envoy_verify(hash: &str, key: &[u8], signature: &[u8], text: &[u8]) -> Result<bool, &'static str> {
    use p256::pkcs8::DecodePublicKey as _;
    use sha2::{Digest, Sha256, Sha384, Sha512};
    if !["sha256", "sha384", "sha512"].contains(&hash) {
        return Err("hash is not supported.");
    }
    if let Ok(rsa_key) = rsa::RsaPublicKey::from_public_key_der(key) {
        let ok = match hash {
            "sha256" => rsa_key.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(text), signature),
            "sha384" => rsa_key.verify(rsa::Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(text), signature),
            _ => rsa_key.verify(rsa::Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(text), signature),
        };
        return Ok(ok.is_ok());
    }
    // BoringSSL hashes with the requested function and verifies the digest with any curve.
    let digest = match hash {
        "sha256" => Sha256::digest(text).to_vec(),
        "sha384" => Sha384::digest(text).to_vec(),
        _ => Sha512::digest(text).to_vec(),
    };
    use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
    if let Ok(ec) = p256::PublicKey::from_public_key_der(key) {
        let key = p256::ecdsa::VerifyingKey::from(ec);
        return Ok(p256::ecdsa::Signature::from_der(signature).is_ok_and(|s| key.verify_prehash(&digest, &s).is_ok()));
    }
    if let Ok(ec) = p384::PublicKey::from_public_key_der(key) {
        let key = p384::ecdsa::VerifyingKey::from(ec);
        return Ok(p384::ecdsa::Signature::from_der(signature).is_ok_and(|s| key.verify_prehash(&digest, &s).is_ok()));
    }
    if let Ok(ec) = p521::PublicKey::from_public_key_der(key) {
        let key = p521::ecdsa::VerifyingKey::from_affine(*ec.as_affine()).map_err(|_| "bad key")?;
        return Ok(p521::ecdsa::Signature::from_der(signature).is_ok_and(|s| key.verify_prehash(&digest, &s).is_ok()));
    }
    Err("Failed to initialize digest verify.")
}

/// The length-delimited fields of a protobuf message; `None` if it is anything else.
fn decode_fields(mut bytes: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
    let mut fields = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        if tag & 7 != 2 {
            return None;
        }
        let mut len = 0usize;
        let mut shift = 0;
        let mut rest = rest;
        loop {
            let (&byte, after) = rest.split_first()?;
            rest = after;
            len |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let (value, after) = rest.split_at_checked(len)?;
        fields.push((tag >> 3, value.to_vec()));
        bytes = after;
    }
    Some(fields)
}
