use super::*;
use crate::fakes::{EnvoyVerifySignature, NoForeignFunctions};
use crate::keys::public_key::SignedBytes;
use crate::testkeys::signing_key;

fn envoy() -> HostCrypto {
    HostCrypto::probe(Box::new(EnvoyVerifySignature::default())).0
}

#[test]
fn probe_vectors_verify_in_the_vm() {
    for alg in CANDIDATES {
        let (key, signature) = probe_vector(alg).expect("vector decodes");
        let sha256 = crate::keys::alg::HashAlg::Sha256.digest(&[PROBE_MESSAGE]);
        let signed = SignedBytes { input: PROBE_MESSAGE, sha256: &sha256 };
        assert!(key.verify_in_vm(alg, signed, &signature), "{alg}");
    }
}

#[test]
fn envoy_verifies_rsa_pkcs1_and_ecdsa_and_nothing_else() {
    let (host, report) = HostCrypto::probe(Box::new(EnvoyVerifySignature::default()));
    assert_eq!(report.verified_by_host, CANDIDATES.into_iter().collect());
    assert_eq!(report.why_not, None);
    assert_eq!(host.algorithms().len(), 6);
    for alg in [Algorithm::Ps256, Algorithm::Ps384, Algorithm::Ps512, Algorithm::EdDsa] {
        let key = signing_key(alg, 0);
        let token_key =
            crate::keys::jwks::parse(serde_json::json!({"keys": [key.jwk("k", None)]}).to_string().as_bytes())
                .expect("jwks")
                .key_set;
        let candidate = &token_key.keys[0].key;
        assert_eq!(host.verify(alg, candidate, b"m", &key.sign_bytes(alg, b"m")), None, "{alg} stays in the VM");
    }
}

#[test]
fn a_host_without_the_function_verifies_nothing() {
    let (host, report) = HostCrypto::probe(Box::new(NoForeignFunctions));
    assert!(host.algorithms().is_empty());
    assert!(report.why_not.expect("a reason").contains("no verify_signature"));
}

/// A host that answers yes to everything must not be trusted with anything.
struct AlwaysYes;
impl ForeignFunction for AlwaysYes {
    fn call(&self, _: &str, _: &[u8]) -> Result<Vec<u8>, ForeignCallError> {
        Ok(vec![0x08, 0x01])
    }
}

/// A host that passes the probe and then fails every call.
struct FailsAfter(std::cell::Cell<usize>);
impl ForeignFunction for FailsAfter {
    fn call(&self, name: &str, arguments: &[u8]) -> Result<Vec<u8>, ForeignCallError> {
        let left = self.0.get();
        if left == 0 {
            return Err(ForeignCallError::Failed("InternalFailure".into()));
        }
        self.0.set(left - 1);
        EnvoyVerifySignature::default().call(name, arguments)
    }
}

#[test]
fn a_host_that_says_yes_to_altered_signatures_is_not_used() {
    let (host, report) = HostCrypto::probe(Box::new(AlwaysYes));
    assert!(host.algorithms().is_empty());
    assert!(report.why_not.expect("reason").contains("altered"));
}

#[test]
fn after_the_probe_a_host_error_refuses() {
    let (host, _) = HostCrypto::probe(Box::new(FailsAfter(std::cell::Cell::new(12))));
    assert_eq!(host.algorithms().len(), 6);
    let key = signing_key(Algorithm::Rs256, 0);
    let jwks = crate::keys::jwks::parse(serde_json::json!({"keys": [key.jwk("k", None)]}).to_string().as_bytes())
        .expect("jwks")
        .key_set;
    let signature = key.sign_bytes(Algorithm::Rs256, b"message");
    assert_eq!(host.verify(Algorithm::Rs256, &jwks.keys[0].key, b"message", &signature), Some(false));
}

#[test]
fn host_and_vm_agree_on_real_signatures_of_every_host_algorithm() {
    let host = envoy();
    for alg in CANDIDATES {
        let key = signing_key(alg, 1);
        let other = signing_key(alg, 2);
        let jwks = crate::keys::jwks::parse(
            serde_json::json!({"keys": [key.jwk("k", None), other.jwk("o", None)]}).to_string().as_bytes(),
        )
        .expect("jwks")
        .key_set;
        let message = b"header.payload";
        let signature = key.sign_bytes(alg, message);
        let sha256 = crate::keys::alg::HashAlg::Sha256.digest(&[message]);
        let signed = SignedBytes { input: message, sha256: &sha256 };
        let mut truncated = signature.clone();
        truncated.pop();
        let mut flipped = signature.clone();
        flipped[3] ^= 0x40;
        for (public, candidate, expected) in [
            (&jwks.keys[0].key, &signature, true),
            (&jwks.keys[1].key, &signature, false),
            (&jwks.keys[0].key, &truncated, false),
            (&jwks.keys[0].key, &flipped, false),
            (&jwks.keys[0].key, &Vec::new(), false),
        ] {
            assert_eq!(host.verify(alg, public, message, candidate), Some(expected), "{alg} host");
            assert_eq!(public.verify_in_vm(alg, signed, candidate), expected, "{alg} vm");
        }
        if let crate::keys::alg::Family::Ec(curve) = alg.family() {
            // The DER form of a valid signature is refused by both: JOSE has only raw r || s.
            let der = der::ecdsa_signature(&signature, curve.size()).expect("der");
            assert_eq!(host.verify(alg, &jwks.keys[0].key, message, &der), Some(false), "{alg} DER");
            assert!(!jwks.keys[0].key.verify_in_vm(alg, signed, &der), "{alg} DER");
        }
    }
}

#[test]
fn arguments_and_results_follow_envoys_protobuf() {
    let arguments = encode_arguments("sha256", &[1, 2], &[3; 200], b"t");
    assert_eq!(arguments[..9], [0x0a, 6, b's', b'h', b'a', b'2', b'5', b'6', 0x12]);
    // 200 is a two-byte varint.
    assert_eq!(arguments[8..12], [0x12, 2, 1, 2]);
    assert_eq!(arguments[12..15], [0x1a, 0xc8, 0x01]);
    assert_eq!(decode_result(&[]), Ok(Answer { verified: false, error: None }));
    assert_eq!(decode_result(&[0x08, 0x01]), Ok(Answer { verified: true, error: None }));
    let with_error = [&[0x08, 0x01, 0x12, 0x02][..], b"no"].concat();
    assert_eq!(decode_result(&with_error), Ok(Answer { verified: false, error: Some("no".into()) }));
    assert!(decode_result(&[0x12, 0x05, b'a']).is_err());
    assert!(decode_result(&[0x0d, 0, 0, 0, 0]).is_err());
    assert!(decode_result(&[0x08]).is_err());
}
