use super::*;
use crate::fakes::{EnvoyVerifySignature, NoForeignFunctions};
use crate::testkeys::signing_key;

fn envoy() -> HostCrypto {
    HostCrypto::probe(Box::new(EnvoyVerifySignature::default())).0
}

#[test]
fn probe_vectors_verify_in_the_vm() {
    for alg in CANDIDATES {
        let (key, signature) = probe_vector(alg).expect("vector decodes");
        let signed = PROBE_MESSAGE;
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
    // Four calls per algorithm at the probe, then the host fails.
    let (host, _) = HostCrypto::probe(Box::new(FailsAfter(std::cell::Cell::new(24))));
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
        let signed = message;
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

/// A host that answers from the signature alone (as a cache keyed by key and signature would).
struct IgnoresText;
impl ForeignFunction for IgnoresText {
    fn call(&self, name: &str, arguments: &[u8]) -> Result<Vec<u8>, ForeignCallError> {
        // Re-ask Envoy's rebuild with the probe's message, whatever text was sent.
        let mut rewritten = arguments.to_vec();
        let text_start = rewritten.len() - PROBE_MESSAGE.len();
        rewritten.truncate(text_start);
        rewritten.extend_from_slice(PROBE_MESSAGE);
        EnvoyVerifySignature::default().call(name, &rewritten)
    }
}

/// A host that ignores the hash it is told and always uses SHA-256 (so RS384 and RS512 fail,
/// and a SHA-256 signature passes under any hash name).
struct AlwaysSha256;
impl ForeignFunction for AlwaysSha256 {
    fn call(&self, name: &str, arguments: &[u8]) -> Result<Vec<u8>, ForeignCallError> {
        let [0x0a, 6, rest @ ..] = arguments else { return Err(ForeignCallError::Failed("args".into())) };
        let rewritten = [&[0x0a, 6][..], b"sha256", &rest[6..]].concat();
        EnvoyVerifySignature::default().call(name, &rewritten)
    }
}

#[test]
fn hosts_that_ignore_the_text_or_the_hash_are_not_trusted() {
    let (host, report) = HostCrypto::probe(Box::new(IgnoresText));
    assert!(host.algorithms().is_empty(), "{report:?}");
    assert!(report.why_not.expect("reason").contains("another message"));
    let (host, report) = HostCrypto::probe(Box::new(AlwaysSha256));
    assert!(!host.algorithms().contains(Algorithm::Rs256), "{report:?}");
    assert!(!host.algorithms().contains(Algorithm::Rs384), "{report:?}");
}

#[test]
fn what_the_vm_would_refuse_never_reaches_the_host() {
    let envoy = EnvoyVerifySignature::default();
    let calls = std::rc::Rc::new(envoy);
    struct Counting(std::rc::Rc<EnvoyVerifySignature>);
    impl ForeignFunction for Counting {
        fn call(&self, name: &str, arguments: &[u8]) -> Result<Vec<u8>, ForeignCallError> {
            self.0.call(name, arguments)
        }
    }
    let (host, _) = HostCrypto::probe(Box::new(Counting(calls.clone())));
    let probe_calls = calls.calls.get();
    let key_of = |alg: Algorithm| {
        let jwk = signing_key(alg, 0).jwk("k", None);
        crate::keys::jwks::parse(serde_json::json!({"keys": [jwk]}).to_string().as_bytes()).expect("jwks").key_set.keys
            [0]
        .key
        .clone()
    };
    let p256 = key_of(Algorithm::Es256);
    // CVE-2022-21449's r = s = 0, s = n, a DER signature, a wrong length: refused without a call.
    let n = hex_p256_order();
    for signature in [vec![0u8; 64], [vec![0u8; 31], vec![1], n.clone()].concat(), vec![1u8; 63]] {
        assert_eq!(host.verify(Algorithm::Es256, &p256, b"m", &signature), Some(false));
    }
    let rsa = key_of(Algorithm::Rs256);
    assert_eq!(host.verify(Algorithm::Rs256, &rsa, b"m", &[1u8; 255]), Some(false));
    // A key of another family is refused, whatever the host would say.
    assert_eq!(host.verify(Algorithm::Rs256, &p256, b"m", &[1u8; 64]), Some(false));
    assert_eq!(calls.calls.get(), probe_calls, "none of these reached the host");
    // A real signature does.
    let signature = signing_key(Algorithm::Es256, 0).sign_bytes(Algorithm::Es256, b"m");
    assert_eq!(host.verify(Algorithm::Es256, &p256, b"m", &signature), Some(true));
    assert_eq!(calls.calls.get(), probe_calls + 1);
}

#[test]
fn rsa_keys_with_small_exponents_stay_in_the_vm() {
    let host = envoy();
    let private = rsa::RsaPrivateKey::new_with_exp(&mut rsa::rand_core::OsRng, 2048, &rsa::BigUint::from(3u8))
        .expect("e = 3 key");
    use rsa::traits::PublicKeyParts;
    let jwk = serde_json::json!({"kty": "RSA", "n": crate::testkeys::b64(private.n().to_bytes_be()), "e": "Aw"});
    let key =
        crate::keys::jwks::parse(serde_json::json!({"keys": [jwk]}).to_string().as_bytes()).expect("jwks").key_set.keys
            [0]
        .key
        .clone();
    assert_eq!(host.verify(Algorithm::Rs256, &key, b"m", &[1u8; 256]), None);
}

/// The order n of P-256, big-endian.
fn hex_p256_order() -> Vec<u8> {
    let hex = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect()
}

#[test]
fn replies_are_read_as_protobuf_reads_them() {
    // Field 17 (a two-byte tag), then field 2 as a varint, then a field-0 tag: not a result.
    assert!(decode_result(&[0x88, 0x01, 0x08, 0x10, 0x00, 0x00]).is_err());
    assert!(decode_result(&[0x00, 0x01]).is_err());
    // Unknown varint fields are skipped, as protobuf skips them.
    assert_eq!(decode_result(&[0x18, 0x05, 0x08, 0x01]), Ok(Answer { verified: true, error: None }));
}

/// Envoy's function, counting the calls made to it.
struct Counted(std::rc::Rc<std::cell::Cell<usize>>);
impl ForeignFunction for Counted {
    fn call(&self, name: &str, arguments: &[u8]) -> Result<Vec<u8>, ForeignCallError> {
        self.0.set(self.0.get() + 1);
        EnvoyVerifySignature::default().call(name, arguments)
    }
}

fn real_key(alg: Algorithm) -> (PublicKey, Vec<u8>) {
    let key = signing_key(alg, 0);
    let jwks = serde_json::json!({"keys": [key.jwk("k", None)]}).to_string();
    let public = crate::keys::jwks::parse(jwks.as_bytes()).expect("jwks").key_set.keys.remove(0).key;
    (public, key.sign_bytes(alg, b"m"))
}

#[test]
fn each_algorithm_is_checked_once_before_its_first_use() {
    let calls = std::rc::Rc::new(std::cell::Cell::new(0));
    let host = HostCrypto::new(Box::new(Counted(calls.clone())));
    assert_eq!(calls.get(), 0, "nothing is asked before a token needs it");
    assert!(host.algorithms().is_empty() && host.take_findings().is_empty());
    let (key, signature) = real_key(Algorithm::Es256);
    assert_eq!(host.verify(Algorithm::Es256, &key, b"m", &signature), Some(true));
    assert_eq!(calls.get(), 4 + 1, "four checks, then the token itself");
    assert_eq!(host.take_findings(), vec![(Algorithm::Es256, None)]);
    assert_eq!(host.verify(Algorithm::Es256, &key, b"other", &signature), Some(false));
    assert_eq!(calls.get(), 4 + 2, "checked once");
    assert!(host.take_findings().is_empty());
    assert_eq!(host.algorithms(), [Algorithm::Es256].into_iter().collect());
    // Another algorithm has its own check.
    let (rsa, signature) = real_key(Algorithm::Rs384);
    assert_eq!(host.verify(Algorithm::Rs384, &rsa, b"m", &signature), Some(true));
    assert_eq!(calls.get(), 4 + 2 + 5);
    assert_eq!(host.take_findings(), vec![(Algorithm::Rs384, None)]);
}

#[test]
fn a_failed_check_keeps_the_algorithm_in_the_vm_and_is_not_repeated() {
    struct CountedYes(std::rc::Rc<std::cell::Cell<usize>>);
    impl ForeignFunction for CountedYes {
        fn call(&self, name: &str, arguments: &[u8]) -> Result<Vec<u8>, ForeignCallError> {
            self.0.set(self.0.get() + 1);
            AlwaysYes.call(name, arguments)
        }
    }
    let calls = std::rc::Rc::new(std::cell::Cell::new(0));
    let host = HostCrypto::new(Box::new(CountedYes(calls.clone())));
    let (key, signature) = real_key(Algorithm::Rs256);
    assert_eq!(host.verify(Algorithm::Rs256, &key, b"m", &signature), None, "verified in the VM");
    let [(Algorithm::Rs256, Some(why))] = &host.take_findings()[..] else { panic!("one failed check") };
    assert!(why.contains("altered") && !why.starts_with("RS256"), "{why}: the log line names the algorithm");
    let asked = calls.get();
    assert_eq!(host.verify(Algorithm::Rs256, &key, b"m", &signature), None);
    assert_eq!(calls.get(), asked, "a failed check is not made again");
    assert!(host.take_findings().is_empty() && host.algorithms().is_empty());
    // Without the function at all, likewise.
    let host = HostCrypto::new(Box::new(NoForeignFunctions));
    assert_eq!(host.verify(Algorithm::Rs256, &key, b"m", &signature), None);
    let [(Algorithm::Rs256, Some(why))] = &host.take_findings()[..] else { panic!("one failed check") };
    assert!(why.contains("no verify_signature"), "{why}");
}

#[test]
fn keys_the_host_never_takes_need_no_check() {
    let calls = std::rc::Rc::new(std::cell::Cell::new(0));
    let host = HostCrypto::new(Box::new(Counted(calls.clone())));
    for alg in [Algorithm::Ps256, Algorithm::EdDsa] {
        let (key, signature) = real_key(alg);
        assert_eq!(host.verify(alg, &key, b"m", &signature), None, "{alg}");
    }
    let private = rsa::RsaPrivateKey::new_with_exp(&mut rsa::rand_core::OsRng, 2048, &rsa::BigUint::from(3u8))
        .expect("e = 3 key");
    use rsa::traits::PublicKeyParts;
    let jwk = serde_json::json!({"kty": "RSA", "n": crate::testkeys::b64(private.n().to_bytes_be()), "e": "Aw"});
    let jwks = serde_json::json!({"keys": [jwk]}).to_string();
    let key = crate::keys::jwks::parse(jwks.as_bytes()).expect("jwks").key_set.keys.remove(0).key;
    assert_eq!(host.verify(Algorithm::Rs256, &key, b"m", &[1u8; 256]), None);
    // A key of another family, or a signature the VM would refuse unseen, is refused without a check.
    let (p256, _) = real_key(Algorithm::Es256);
    assert_eq!(host.verify(Algorithm::Rs256, &p256, b"m", &[1u8; 256]), Some(false));
    let (rsa, _) = real_key(Algorithm::Rs256);
    assert_eq!(host.verify(Algorithm::Rs256, &rsa, b"m", &[1u8; 255]), Some(false));
    assert_eq!(host.verify(Algorithm::Es256, &p256, b"m", &[0u8; 64]), Some(false));
    assert_eq!(calls.get(), 0);
    assert!(host.take_findings().is_empty());
}

#[test]
fn after_its_check_a_host_error_refuses() {
    // The four check calls succeed, then the host fails.
    let host = HostCrypto::new(Box::new(FailsAfter(std::cell::Cell::new(4))));
    let (key, signature) = real_key(Algorithm::Rs256);
    assert_eq!(host.verify(Algorithm::Rs256, &key, b"m", &signature), Some(false));
    assert_eq!(host.take_findings(), vec![(Algorithm::Rs256, None)]);
    assert_eq!(host.verify(Algorithm::Rs256, &key, b"m", &signature), Some(false), "never the VM's yes");
}
