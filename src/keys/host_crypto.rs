//! The host's signature verification: Envoy's Wasm foreign function `verify_signature` (Envoy ≥
//! 1.31, `source/extensions/common/wasm/foreign.cc`), which runs BoringSSL natively, about four
//! times faster than RSA inside the VM.
//!
//! The core owns the protocol (the protobuf arguments and reply, the SPKI and DER conversions) and
//! the decision of which algorithms to hand over; the host only performs the call. Whether the host
//! verifies an algorithm correctly is checked in each VM right before its first token of that
//! algorithm (a key and signature the host would take), by known answers: a good signature must
//! verify, and the same signature altered, over another message or under another hash must not.
//! Anything else (the function is missing, an error, a wrong answer) leaves that algorithm to the
//! VM. After its check, a host error on a real token is a refusal, never an accept.
//!
//! Why at the first token and not at configure: checking all six algorithms was 24 host calls,
//! 4.4 ms of them for P-384 and P-521 alone, on Envoy's main thread before it starts its workers,
//! at every start of every sidecar, for algorithms most issuers never use. Checked when first
//! needed, an RS256 issuer pays four RSA calls (about 0.1 ms) once per VM, and nothing is kept in
//! shared data.

use crate::base64url;
use crate::keys::alg::{Algorithm, AlgorithmSet, Curve, HashAlg};
use crate::keys::der;
use crate::keys::ec::EcKey;
use crate::keys::public_key::PublicKey;
use crate::keys::rsa::RsaVerifyKey;
use std::cell::{Cell, RefCell};

/// The foreign function's name in Envoy.
pub const FUNCTION: &str = "verify_signature";

/// Algorithms Envoy's `verify_signature` can take: RSA PKCS#1 v1.5 and ECDSA. It has no padding
/// option (so no PSS) and cannot initialize Ed25519 keys.
const CANDIDATES: [Algorithm; 6] =
    [Algorithm::Rs256, Algorithm::Rs384, Algorithm::Rs512, Algorithm::Es256, Algorithm::Es384, Algorithm::Es512];

/// How a foreign-function call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForeignCallError {
    /// The host has no function of that name (older Envoy, other Proxy-Wasm hosts).
    NotFound,
    /// Any other failure, with the host's status.
    Failed(String),
}

/// The one host service this module needs: a synchronous foreign-function call.
pub trait ForeignFunction {
    fn call(&self, name: &str, arguments: &[u8]) -> Result<Vec<u8>, ForeignCallError>;
}

/// Signature verification by the host, for each algorithm once its check has passed.
pub struct HostCrypto {
    host: Box<dyn ForeignFunction>,
    /// The candidates checked so far, and those of them that passed.
    checked: Cell<AlgorithmSet>,
    passed: Cell<AlgorithmSet>,
    /// Checks not yet reported: the algorithm and, if it failed, why (without the algorithm's name).
    findings: RefCell<Vec<(Algorithm, Option<String>)>>,
}

impl std::fmt::Debug for HostCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostCrypto(checked {}, passed {})", self.checked.get(), self.passed.get())
    }
}

/// What `probe` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub verified_by_host: AlgorithmSet,
    /// Why the other candidates stay in the VM (the first failure seen).
    pub why_not: Option<String>,
}

impl HostCrypto {
    /// The host, with no algorithm checked yet: each is checked before its first use.
    pub fn new(host: Box<dyn ForeignFunction>) -> HostCrypto {
        HostCrypto {
            host,
            checked: Cell::new(AlgorithmSet::NONE),
            passed: Cell::new(AlgorithmSet::NONE),
            findings: RefCell::new(Vec::new()),
        }
    }

    /// Checks every candidate now (the Wycheproof harness and the tests): what `verify` would
    /// find one algorithm at a time.
    pub fn probe(host: Box<dyn ForeignFunction>) -> (HostCrypto, ProbeReport) {
        let crypto = HostCrypto::new(host);
        let mut why_not = None;
        for alg in CANDIDATES {
            if let Err(failure) = crypto.check(alg) {
                why_not.get_or_insert_with(|| format!("{alg}: {failure}"));
            }
        }
        crypto.findings.borrow_mut().clear();
        let report = ProbeReport { verified_by_host: crypto.passed.get(), why_not };
        (crypto, report)
    }

    /// The algorithms the host may take: every candidate (each still to pass its check).
    pub fn candidates() -> AlgorithmSet {
        CANDIDATES.into_iter().collect()
    }

    /// The algorithms whose check has passed so far.
    pub fn algorithms(&self) -> AlgorithmSet {
        self.passed.get()
    }

    /// The checks made since the last call: each algorithm and, if the host failed it, why.
    pub fn take_findings(&self) -> Vec<(Algorithm, Option<String>)> {
        std::mem::take(&mut *self.findings.borrow_mut())
    }

    /// `alg`'s check, made on first use: a known-good signature must verify, and three that must
    /// not: the same signature altered, the same over another message, and the same under another
    /// hash name. A host that answers any of them wrongly, or errs, keeps that algorithm in the VM.
    /// (It cannot prove a verifier right: the checks `handoff` makes before every call, and the
    /// keys that never go to the host, are the rest of the defence.)
    #[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
    fn check(&self, alg: Algorithm) -> Result<(), String> {
        let checked = self.checked.get();
        if checked.contains(alg) {
            return if self.passed.get().contains(alg) { Ok(()) } else { Err(String::new()) };
        }
        let mut now_checked = checked;
        now_checked.insert(alg);
        self.checked.set(now_checked);
        let result = self.run_checks(alg);
        if result.is_ok() {
            let mut passed = self.passed.get();
            passed.insert(alg);
            self.passed.set(passed);
        }
        self.findings.borrow_mut().push((alg, result.clone().err()));
        result
    }

    fn run_checks(&self, alg: Algorithm) -> Result<(), String> {
        let (Some((key, signature)), Some(hash)) = (probe_vector(alg), alg.hash()) else {
            return Err("no probe vector".to_string());
        };
        let mut altered = signature.clone();
        if let Some(last) = altered.last_mut() {
            *last ^= 0x01;
        }
        let other_hash = if hash == HashAlg::Sha256 { HashAlg::Sha512 } else { HashAlg::Sha256 };
        let checks = [
            (hash, PROBE_MESSAGE, &signature, true, "a valid signature"),
            (hash, PROBE_MESSAGE, &altered, false, "an altered signature"),
            (hash, PROBE_OTHER_MESSAGE, &signature, false, "a signature of another message"),
            (other_hash, PROBE_MESSAGE, &signature, false, "a signature under another hash"),
        ];
        for (hash, message, signature, expected, what) in checks {
            match call(&*self.host, hash, alg, &key, message, signature) {
                Ok(answer) if answer.verified == expected => {}
                Ok(Answer { error: Some(error), .. }) if expected => return Err(error),
                Ok(answer) => return Err(format!("answered {} for {what}", answer.verified)),
                Err(error) => return Err(error.to_string()),
            }
        }
        Ok(())
    }

    /// Whether the host says `signature` is `key`'s signature of `message` with `alg`. `None` if
    /// this algorithm (its check failed) or this key is not handed to the host (verify in the VM
    /// instead); a failed call is `Some(false)`: the host passed this algorithm's check, so
    /// failing now refuses.
    pub fn verify(&self, alg: Algorithm, key: &PublicKey, message: &[u8], signature: &[u8]) -> Option<bool> {
        let hash = alg.hash().filter(|_| CANDIDATES.contains(&alg))?;
        // A key the host never takes, or a signature it would not be shown (another family, a
        // wrong length, r or s out of range: refused as the VM refuses them), needs no check.
        let Some(prepared) = handoff(alg, key, signature).ok()? else { return Some(false) };
        self.check(alg).ok()?;
        match call_prepared(&*self.host, hash, key, message, &prepared) {
            Ok(answer) => Some(answer.verified),
            Err(Refusal::InVm) => None,
            Err(_) => Some(false),
        }
    }
}

/// The host's reply: `verified` only when it says so. Envoy sets an error text on every `false`,
/// a bad signature ("Failed to verify digest") as much as a key it cannot use, so the text is
/// only for the check's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub verified: bool,
    pub error: Option<String>,
}

/// Why a call gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// Not for the host: this key is verified in the VM.
    InVm,
    /// The host failed, or replied with something that is not a `VerifySignatureResult`.
    Host(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::InVm => f.write_str("not handed to the host"),
            Refusal::Host(why) => f.write_str(why),
        }
    }
}

/// What goes to the host for `key` and `signature`, checked first as the VM's own verifier
/// would check it, so that the host never sees what must be refused anyway (a host with a lax
/// verifier cannot then be fooled by it): the key's family must be the algorithm's; an RSA
/// signature must be exactly the modulus's length; an ECDSA signature must be the curve's raw
/// `r || s` with both in [1, n − 1] (which rules out CVE-2022-21449's zero signature), and goes
/// as DER, which is what BoringSSL takes. RSA keys with an exponent other than 65537 stay in the
/// VM: small exponents are what lenient PKCS#1 parsers are forged through (Bleichenbacher 2006),
/// and the probe key cannot show the host is not one. Ed25519 never goes.
fn handoff(alg: Algorithm, key: &PublicKey, signature: &[u8]) -> Result<Option<Vec<u8>>, Refusal> {
    if key.family() != alg.family() {
        return Ok(None);
    }
    match key {
        PublicKey::Rsa(rsa) if rsa.exponent() != 65_537 => Err(Refusal::InVm),
        PublicKey::Rsa(rsa) => Ok((signature.len() == rsa.size()).then(|| signature.to_vec())),
        PublicKey::Ec(ec) => {
            Ok(ec.signature_in_range(signature).then(|| der::ecdsa_signature(signature, ec.curve().size())).flatten())
        }
        PublicKey::Ed25519(_) => Err(Refusal::InVm),
    }
}

/// One `verify_signature` call with `hash`: the host's answer (or a refusal without asking, for
/// a signature `handoff` refuses), or why there is none.
fn call(
    host: &dyn ForeignFunction,
    hash: HashAlg,
    alg: Algorithm,
    key: &PublicKey,
    message: &[u8],
    signature: &[u8],
) -> Result<Answer, Refusal> {
    match handoff(alg, key, signature)? {
        Some(prepared) => call_prepared(host, hash, key, message, &prepared),
        None => Ok(Answer { verified: false, error: Some("refused before the host was asked".into()) }),
    }
}

/// The call itself, for a signature `handoff` prepared.
fn call_prepared(
    host: &dyn ForeignFunction,
    hash: HashAlg,
    key: &PublicKey,
    message: &[u8],
    signature: &[u8],
) -> Result<Answer, Refusal> {
    let Some(public_key) = key.spki() else {
        return Ok(Answer { verified: false, error: Some("refused before the host was asked".into()) });
    };
    let arguments = encode_arguments(hash.name(), &public_key, signature, message);
    match host.call(FUNCTION, &arguments) {
        Ok(reply) => decode_result(&reply).map_err(Refusal::Host),
        Err(ForeignCallError::NotFound) => Err(Refusal::Host(format!("the host has no {FUNCTION} function"))),
        Err(ForeignCallError::Failed(status)) => Err(Refusal::Host(format!("{FUNCTION} failed: {status}"))),
    }
}

/// `VerifySignatureArguments {string hash_function = 1; bytes public_key = 2; bytes signature = 3;
/// bytes text = 4}` (Envoy's `ext/verify_signature.proto`); `public_key` is DER
/// SubjectPublicKeyInfo, and field 5 (`public_key_pem`) must stay absent when 2 is set.
pub fn encode_arguments(hash_function: &str, public_key: &[u8], signature: &[u8], text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hash_function.len() + public_key.len() + signature.len() + text.len() + 16);
    for (field, bytes) in [(1u8, hash_function.as_bytes()), (2, public_key), (3, signature), (4, text)] {
        out.push(field << 3 | 2); // length-delimited
        push_varint(&mut out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    out
}

/// `VerifySignatureResult {bool result = 1; string error = 2}` (proto3 leaves `result` out when
/// false); `Err` only for a reply that is not that message.
pub fn decode_result(reply: &[u8]) -> Result<Answer, String> {
    let mut result = false;
    let mut error = None;
    let mut rest = reply;
    while !rest.is_empty() {
        let (tag, after_tag) = read_varint(rest).ok_or("truncated reply")?;
        rest = after_tag;
        match (tag >> 3, tag & 7) {
            (0, _) => return Err("field number 0 in reply".into()),
            (field, 0) => {
                let (value, after) = read_varint(rest).ok_or("truncated reply")?;
                rest = after;
                if field == 1 {
                    result = value != 0;
                }
            }
            (field, 2) => {
                let (len, after) = read_varint(rest).ok_or("truncated reply")?;
                let len = usize::try_from(len).map_err(|_| "oversized field")?;
                let (bytes, after) = after.split_at_checked(len).ok_or("truncated reply")?;
                rest = after;
                if field == 2 && !bytes.is_empty() {
                    error = Some(String::from_utf8_lossy(bytes).into_owned());
                }
            }
            _ => return Err("unexpected reply encoding".into()),
        }
    }
    // A true result with an error text is not a clear yes.
    Ok(Answer { verified: result && error.is_none(), error })
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (index, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, bytes.get(index + 1..)?));
        }
    }
    None
}

/// The message every probe signature signs, and one it does not.
const PROBE_MESSAGE: &[u8] = b"jwt-authz: does the host verify this?";
const PROBE_OTHER_MESSAGE: &[u8] = b"jwt-authz: does the host verify that?";

/// A 2048-bit RSA modulus (e = 65537) and its PKCS#1 v1.5 signatures of `PROBE_MESSAGE`, and a
/// P-256, P-384 and P-521 key with a raw ECDSA signature of it (made once with Python's
/// `cryptography`; a unit test checks each verifies in the VM).
const PROBE_RSA_N: &str = "jdPKXRAN312sj1LElCbBGHd-OOFp9AyRrux8F7N0Trl3pH2iwIolWPp5qyjx8Xgx3mbs8DLKz69VYXNuUKOOyprikZoWwAq8_0yYED069GlG3WvcsXgWy2aSpKXASBdj5BH4XHzDxQMr-6Hw2EI8IzvK5tc7ggtX_nrcrNd9AK3Vqoc-xcOa-l2B2mf6pDUifwndUHOZW_v8TFpq7rx-q1p6RZOh-dSjaupOvuS5hF-hj_jeCRixx1w1ozUlEVKehJy-9QX7IzuoJjXx6PtzYhPY6c0RunTVTOiQMU6prdYmTSL8WG7NgMg2AxzxBs8ls6oMDdw_7DPH8WuZM44A6w";
const PROBE_RS256: &str = "V91T8ikUhPCTh1YW9Dfy0gooIbiit65WZP0ybMOxbtEShyb3_xBN5YF6cnHbXEvDMG0QkDWDRQG0hfwX3vAUGRkJeOHPN0wh2Z3gf_k5sBOji4XjWXkZZp4PlwwcmEA94INwybvKcCEPNvgB0ySvSg7mxgwFUHrWF6rlgwgwB2NIjeALqyBqawXB52hFCuJAAHSzNx3IAXYd0oJTHs6_4FxqRc8DMnnwd5bUDtw1yrfv9GWJ8ugUeOZb4DpbC6nCfcU6GY6n_ZA-rm-Fv8M8ysw9hQ2uCqLrPzgH39WxSGkanzyR_d5vVI8HIP9bnTBRrqqXCSnjf-uRy3dOKmfQKQ";
const PROBE_RS384: &str = "fzzUjklqB4ChWLRfDGuf2N4qkRi56Gn6LAvIRdgbVbqnFC74dNtUx6tubIExmxguqAKEAYvQXqwxwQb_0-ou6wtyhjWFR0MshnurD1npet_IgMUYAbv-ltaUoDg1P9APzy4V20epNVb04M0yOY-xqYFgAMgtFeKmk9Dw5tGUbvIQp4_XnOLMyAYqvV7FdfhMBqUuaNXbjy25hRjWcA_YpVJ6mCm5khl7KvqYwcLQkAwTxtNjT7148ftIIW3G4BHiszkLtkyNrPsjsNoCbfvqu6DUvGRsHQ6iObbU9cIS7q6Cr3zjBB8G2L3iTjkDoAnhTFafFUNv21XtTHCS9QRiXQ";
const PROBE_RS512: &str = "YktOaHvzIOeDXAC2-PE0y0JsBR1P7w8Yd0hddp9H7scceCSGxtPhwHgnpY-V6_EzxORgUKy8rq3w-cfQboBZt_hFLkvgA9uDd0MQ9XkVaFcs3mJJt23uQ8F7cg4-WI10YNe-DxYhUI8xiCwYc5FGZcSDPKiyK-8xxEkPhD3q40GvAiI56lGEYkI5Xck9Xg3KspVgLQcq84DVZ05fbXLM_NKQNlFrXf9tFsKEY-tuL01wh2uXudlZJ4I2fVoB6kvLTxn1v0OBUw5ay1OsRb2lqi4NjZOgqzOtT3tvqn00wSyIsC2rS_4N2sguJUvlZs43ySiVBJd23Fi-qh5cluD6fQ";
const PROBE_ES256: [&str; 3] = [
    "uk0AP2XSN-150HPKgFXyqiAIH467HuM4KdUxvO09vEI",
    "4TjIi1LcsAyBXS9g_jQwf_73FYqOGzEWP3U5EbZ6TGE",
    "rWpp_kJmQT75Lwx944sjyS5rGpv7B4eKAsvc-jOZVIQ_uN4kSHdun1LyvGLUmuXjkScF3E-8_lHs4RiULl4ZMg",
];
const PROBE_ES384: [&str; 3] = [
    "fDZ-7IDpuE5bv-JabJj6TbU9u7Lct_-Fn-yoZkNH-EOUtKsKi_xGfM8eWZhCdV_N",
    "pc2lTH-lCs9xAMV1t6kQDsECJh4yQhxdWFP6565-Q9iDVrkvl-OjPVEYbZzwJG3_",
    "8gj-r5dIcIaJ_TTmQ6iRT09lui0WbtmIAVCLsyPD_b2zN8cArQqAsf170oimBnUUlyHcIviVTRviOOn8oIK6Tc3_FooZ5zuyimXlWGId0GRxPrbOvUOvxmTbUbuiH5u7",
];
const PROBE_ES512: [&str; 3] = [
    "AE-ETlqWu4rD4oA_cIwZTa4MzY2LhnvBj780f8e4RNtBem0gWSm1EK2dtGhsCAMbKP05hR6kS3c8FihbDo0QBF5q",
    "APcIAYwX_P4Zr7qr447_1dLezUmEOIYssoPON14o14yjK9x_zXdy2Ln3zg_OJw1rUDGcSX6A1A4INfIW3mqeeK4P",
    "AKQsSMjksoUAZorwtnQkgeZR7eFDAs8xMFIa3yOpLtbGeuYAu-JhPHd3cjvXuQpziZfytArhU0L14Dv200ZgBt1DAOY6qqLpvwazug5def2AxuKkB0UH4Ex9ynWsv6gV0D72-A7MCONPA8zsjM55c1vpadycP_yAL0OEr7C_no2L7A31",
];

/// The probe key and signature for `alg`.
fn probe_vector(alg: Algorithm) -> Option<(PublicKey, Vec<u8>)> {
    let decode = base64url::decode;
    let rsa = || RsaVerifyKey::from_be_bytes(&decode(PROBE_RSA_N)?, &[1, 0, 1]).ok().map(PublicKey::Rsa);
    let ec = |curve: Curve, [x, y, signature]: [&str; 3]| {
        let key = EcKey::from_coordinates(curve, &decode(x)?, &decode(y)?).ok()?;
        Some((PublicKey::Ec(key), decode(signature)?))
    };
    match alg {
        Algorithm::Rs256 => Some((rsa()?, decode(PROBE_RS256)?)),
        Algorithm::Rs384 => Some((rsa()?, decode(PROBE_RS384)?)),
        Algorithm::Rs512 => Some((rsa()?, decode(PROBE_RS512)?)),
        Algorithm::Es256 => ec(Curve::P256, PROBE_ES256),
        Algorithm::Es384 => ec(Curve::P384, PROBE_ES384),
        Algorithm::Es512 => ec(Curve::P521, PROBE_ES512),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
