//! Wycheproof vectors against both signature backends natively: the VM's own verifiers (the
//! in-VM backend of the filter, for all ten algorithms) and `HostCrypto`'s protocol over the
//! RustCrypto rebuild of Envoy's `verify_signature` (the SPKI, DER and protobuf conversions; the
//! real host is run in Envoy by tests/envoy/test_wycheproof.py).

use jwt_authz::conformance::{self, Report};
use jwt_authz::fakes::EnvoyVerifySignature;
use jwt_authz::keys::alg::Algorithm;
use jwt_authz::keys::host_crypto::HostCrypto;

fn assert_clean(report: &Report, algorithms: &[Algorithm], minimum: usize) {
    assert!(!report.contains_key("load"), "vector files missing: {:?}", report.get("load"));
    for alg in algorithms {
        let tally = report.get(alg.name()).unwrap_or_else(|| panic!("no vectors for {alg}"));
        assert!(tally.failed.is_empty(), "{alg}: {} wrong answers:\n{}", tally.failed.len(), tally.failed.join("\n"));
        assert!(tally.passed >= minimum, "{alg}: only {} vectors ran", tally.passed);
    }
}

#[test]
fn in_vm_verifiers_pass_wycheproof_for_every_algorithm() {
    let report = conformance::run(&|alg, key, message, signature| Some(key.verify_in_vm(alg, message, signature)));
    assert_clean(&report, &Algorithm::ALL, 50);
    // The 8192-bit files are refused by the key parser (at most 4096 bits), and said so.
    let rs256 = &report["RS256"];
    assert!(rs256.skipped > 0 && rs256.skip_reason.as_deref().is_some_and(|r| r.contains("above 4096")), "{rs256:?}");
}

#[test]
fn the_host_protocol_passes_wycheproof_where_the_host_verifies() {
    let (host, _) = HostCrypto::probe(Box::new(EnvoyVerifySignature::default()));
    let report = conformance::run(&|alg, key, message, signature| host.verify(alg, key, message, signature));
    let host_algorithms: Vec<Algorithm> = host.algorithms().iter().collect();
    assert_eq!(host_algorithms.len(), 6);
    assert_clean(&report, &host_algorithms, 50);
    for alg in [Algorithm::Ps256, Algorithm::EdDsa] {
        assert_eq!(report.get(alg.name()).map_or(0, |t| t.passed), 0, "{alg} is not the host's");
    }
}
