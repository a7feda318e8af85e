use super::*;
use crate::keys::alg::Algorithm;
use crate::testkeys;
use serde_json::{json, Value as Json};

fn map(value: Json) -> Map {
    let Value::Object(map) = Value::from(value) else { panic!("object") };
    map
}

fn public_jwk(alg: Algorithm, index: usize) -> Json {
    let mut jwk = testkeys::signing_key(alg, index).jwk("k", None);
    let object = jwk.as_object_mut().expect("object");
    object.remove("kid");
    object.remove("use");
    jwk
}

fn jkt(alg: Algorithm, index: usize) -> [u8; 32] {
    jwk_thumbprint(&map(public_jwk(alg, index))).expect("thumbprint")
}

const NOW: u64 = 1_800_000_000;
const TOKEN: &str = "the.access.token";

fn claims_bound_to(thumbprint: [u8; 32]) -> Map {
    map(json!({"sub": "alice", "cnf": {"jkt": testkeys::b64(thumbprint)}}))
}

fn proof_claims() -> Json {
    json!({
        "jti": "e1j3V_bKic8-LAEB",
        "htm": "POST",
        "htu": "https://api.example/orders",
        "iat": NOW,
        "ath": access_token_hash(TOKEN),
    })
}

fn sign_proof(alg: Algorithm, index: usize, header: Json, claims: &Json) -> String {
    let mut header = header;
    if header.get("jwk").is_none() {
        header["jwk"] = public_jwk(alg, index);
    }
    testkeys::signing_key(alg, index).sign_token(alg, &header, claims)
}

fn proof(claims: &Json) -> String {
    sign_proof(Algorithm::Es256, 0, json!({"typ": "dpop+jwt"}), claims)
}

fn request(proofs: Vec<&str>) -> ProofRequest<'_> {
    ProofRequest { method: "POST", scheme: "https", authority: "api.example", path: "/orders?x=1", proofs }
}

fn run(claims: &Map, dpop_scheme: bool, proofs: Vec<&str>, mode: DpopMode) -> Result<Option<ProofUse>, DpopError> {
    check(mode, dpop_scheme, claims, TOKEN, &request(proofs), &Verifier::in_vm(), &TokenLimits::default(), NOW)
}

#[test]
fn thumbprints_are_rfc_7638s() {
    // RFC 7638 §3.1.
    let rsa = map(json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }));
    let thumbprint = |jwk: &Map| jwk_thumbprint(jwk).map(|t| base64url::encode(&t));
    assert_eq!(thumbprint(&rsa).as_deref(), Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"));
    // RFC 8037 §A.3.
    let okp = map(json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}));
    assert_eq!(thumbprint(&okp).as_deref(), Some("kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"));
    // RFC 7517 §A.1's EC key; the thumbprint is node jose's `calculateJwkThumbprint`.
    let ec = map(json!({
        "kty": "EC", "crv": "P-256", "use": "enc", "kid": "1",
        "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4", "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
    }));
    assert_eq!(thumbprint(&ec).as_deref(), Some(EC_THUMBPRINT));
    for bad in [json!({"kty": "oct", "k": "AA"}), json!({"kty": "EC", "crv": "P-256", "x": "AA"}), json!({"kty": 1})] {
        assert_eq!(jwk_thumbprint(&map(bad.clone())), None, "{bad}");
    }
}

const EC_THUMBPRINT: &str = "cn-I_WNMClehiVp51i_0VpOENW1upEerA8sEam5hn-s";

#[test]
fn uris_are_compared_normalized() {
    let request = |scheme, authority, path| normalize_uri(scheme, authority, path);
    let wanted = Some("https://api.example/a/b".to_string());
    assert_eq!(request("https", "api.example", "/a/b?q=1#f"), wanted);
    assert_eq!(request("HTTPS", "API.Example:443", "/a/./c/../b"), wanted);
    assert_eq!(request("https", "api.example:", "/%61/b"), wanted);
    assert_eq!(normalize_htu("https://API.example:443/a/%62?x#y"), wanted);
    assert_eq!(normalize_htu("https://api.example/a/b/"), Some("https://api.example/a/b/".into()));
    assert_eq!(normalize_uri("http", "h:8080", ""), Some("http://h:8080/".into()));
    assert_eq!(normalize_htu("http://h:80?q"), Some("http://h/".into()));
    assert_eq!(normalize_uri("https", "h", "/a%2fb"), Some("https://h/a%2Fb".into()));
    assert_eq!(normalize_uri("https", "h", "/../../x"), Some("https://h/x".into()));
    assert_eq!(normalize_uri("https", "h:80", "/"), Some("https://h:80/".into()), "not https's default port");
    for bad in ["ftp://h/", "https://user@h/", "https:///x", "h/x", "https://h/%zz", "https://h/%4"] {
        assert_eq!(normalize_htu(bad), None, "{bad}");
    }
}

#[test]
fn a_valid_proof_holds_and_names_its_jti_for_the_replay_store() {
    let claims = claims_bound_to(jkt(Algorithm::Es256, 0));
    let proof = proof(&proof_claims());
    let used = run(&claims, true, vec![&proof], DpopMode::Optional).expect("holds").expect("a proof to record");
    assert_eq!(used.until_seconds, NOW + PROOF_WINDOW_SECONDS);
    // Another jti, another key; the same jti under another key, another key too.
    let mut other = proof_claims();
    other["jti"] = json!("another");
    let again = run(&claims, true, vec![&self::proof(&other)], DpopMode::Required).expect("holds").expect("proof");
    assert_ne!(again.replay_key, used.replay_key);
    let other_key = claims_bound_to(jkt(Algorithm::Es256, 1));
    let by_other = sign_proof(Algorithm::Es256, 1, json!({"typ": "dpop+jwt"}), &proof_claims());
    let theirs = run(&other_key, true, vec![&by_other], DpopMode::Optional).expect("holds").expect("proof");
    assert_ne!(theirs.replay_key, used.replay_key);
}

#[test]
fn typ_is_a_media_type() {
    let claims = claims_bound_to(jkt(Algorithm::Es256, 0));
    for typ in ["dpop+jwt", "DPoP+JWT", "application/dpop+jwt", "Application/DPOP+jwt"] {
        let proof = sign_proof(Algorithm::Es256, 0, json!({"typ": typ}), &proof_claims());
        assert!(run(&claims, true, vec![&proof], DpopMode::Optional).is_ok(), "{typ}");
    }
    for typ in ["jwt", "application/jwt", "dpop+jwt2", "application/", "xapplication/dpop+jwt"] {
        let proof = sign_proof(Algorithm::Es256, 0, json!({"typ": typ}), &proof_claims());
        assert_eq!(run(&claims, true, vec![&proof], DpopMode::Optional), Err(DpopError::WrongType), "{typ}");
    }
}

#[test]
fn every_algorithm_family_proves() {
    for alg in
        [Algorithm::Es256, Algorithm::Es384, Algorithm::Es512, Algorithm::Rs256, Algorithm::Ps256, Algorithm::EdDsa]
    {
        let claims = claims_bound_to(jkt(alg, 0));
        let proof = sign_proof(alg, 0, json!({"typ": "dpop+jwt"}), &proof_claims());
        assert!(run(&claims, true, vec![&proof], DpopMode::Optional).is_ok_and(|used| used.is_some()), "{alg}");
    }
}

#[test]
fn the_scheme_must_agree_with_the_binding() {
    let bound = claims_bound_to(jkt(Algorithm::Es256, 0));
    let bearer = map(json!({"sub": "alice"}));
    let proof = proof(&proof_claims());
    let cases = [
        (&bound, false, DpopMode::Optional, Err(DpopError::BearerDowngrade)),
        (&bound, false, DpopMode::Required, Err(DpopError::BearerDowngrade)),
        (&bound, true, DpopMode::Disabled, Err(DpopError::Disabled)),
        (&bound, false, DpopMode::Disabled, Err(DpopError::Disabled)),
        (&bearer, true, DpopMode::Optional, Err(DpopError::Unbound)),
        (&bearer, false, DpopMode::Required, Err(DpopError::Required)),
        (&bearer, false, DpopMode::Optional, Ok(None)),
        (&bearer, false, DpopMode::Disabled, Ok(None)),
    ];
    for (claims, scheme, mode, expected) in cases {
        assert_eq!(run(claims, scheme, vec![&proof], mode), expected, "{scheme} {mode:?}");
    }
    let unreadable = map(json!({"cnf": {"jkt": "short"}}));
    assert_eq!(confirmation_key(&unreadable), Err(ClaimsError::BadConfirmation));
    assert_eq!(confirmation_key(&map(json!({"cnf": "x"}))), Err(ClaimsError::BadConfirmation));
    assert_eq!(confirmation_key(&map(json!({"cnf": {"x5t#S256": "x"}}))), Ok(None));
}

#[test]
fn every_defect_of_a_proof_has_its_error() {
    let claims = claims_bound_to(jkt(Algorithm::Es256, 0));
    let with = |change: &dyn Fn(&mut Json)| {
        let mut payload = proof_claims();
        change(&mut payload);
        proof(&payload)
    };
    let header = |header: Json| sign_proof(Algorithm::Es256, 0, header, &proof_claims());
    let good = proof(&proof_claims());
    let (input, _) = good.rsplit_once('.').expect("three parts");
    let forged_signature = format!("{input}.{}", testkeys::b64([1u8; 64]));
    let mut private = public_jwk(Algorithm::Es256, 0);
    private["d"] = json!("AAAA");
    let mut rsa_as_ec = public_jwk(Algorithm::Rs256, 0);
    rsa_as_ec["alg"] = json!("RS256");
    let cases: Vec<(String, DpopError)> = vec![
        ("not a jws".into(), DpopError::Malformed),
        (header(json!({"typ": "JWT"})), DpopError::WrongType),
        (header(json!({})), DpopError::WrongType),
        (header(json!({"typ": "dpop+jwt", "jwk": "x"})), DpopError::BadKey),
        (header(json!({"typ": "dpop+jwt", "jwk": private})), DpopError::BadKey),
        (header(json!({"typ": "dpop+jwt", "jwk": public_jwk(Algorithm::Es256, 1)})), DpopError::KeyMismatch),
        (forged_signature, DpopError::Signature),
        (with(&|p| p["htm"] = json!("GET")), DpopError::MethodMismatch),
        (with(&|p| p["htm"] = json!("post")), DpopError::MethodMismatch),
        (with(&|p| p["htu"] = json!("https://api.example/other")), DpopError::UriMismatch),
        (with(&|p| p["htu"] = json!("http://api.example/orders")), DpopError::UriMismatch),
        (with(&|p| p["htu"] = json!("https://evil.example/orders")), DpopError::UriMismatch),
        (with(&|p| p["htu"] = json!("not a uri")), DpopError::UriMismatch),
        (with(&|p| p["iat"] = json!(NOW - PROOF_WINDOW_SECONDS - 1)), DpopError::Stale),
        (with(&|p| p["iat"] = json!(NOW + PROOF_WINDOW_SECONDS + 1)), DpopError::Stale),
        (with(&|p| p["ath"] = json!(access_token_hash("another.access.token"))), DpopError::TokenHashMismatch),
        (with(&|p| drop(p.as_object_mut().map(|o| o.remove("ath")))), DpopError::Malformed),
        (with(&|p| drop(p.as_object_mut().map(|o| o.remove("jti")))), DpopError::Malformed),
        (with(&|p| drop(p.as_object_mut().map(|o| o.remove("iat")))), DpopError::Malformed),
        (with(&|p| p["jti"] = json!("")), DpopError::Malformed),
        (with(&|p| p["jti"] = json!(7)), DpopError::Malformed),
        (with(&|p| p["jti"] = json!("j".repeat(MAX_JTI_BYTES + 1))), DpopError::Malformed),
    ];
    for (proof, expected) in cases {
        assert_eq!(run(&claims, true, vec![&proof], DpopMode::Optional), Err(expected), "{proof}");
    }
    // The edges of the window hold.
    for iat in [NOW - PROOF_WINDOW_SECONDS, NOW + PROOF_WINDOW_SECONDS] {
        let proof = with(&|p| p["iat"] = json!(iat));
        assert!(run(&claims, true, vec![&proof], DpopMode::Optional).is_ok(), "{iat}");
    }
    // A key that cannot make the proof's signature: an RSA key in an ES256 proof.
    let rsa_claims = claims_bound_to(jkt(Algorithm::Rs256, 0));
    let mismatched = testkeys::signing_key(Algorithm::Es256, 0).sign_token(
        Algorithm::Es256,
        &json!({"typ": "dpop+jwt", "jwk": rsa_as_ec}),
        &proof_claims(),
    );
    assert_eq!(run(&rsa_claims, true, vec![&mismatched], DpopMode::Optional), Err(DpopError::BadKey));
    assert_eq!(run(&claims, true, vec![], DpopMode::Optional), Err(DpopError::ProofMissing));
    assert_eq!(run(&claims, true, vec![&good, &good], DpopMode::Optional), Err(DpopError::MultipleProofs));
    let oversized = format!("{good}{}", "A".repeat(20_000));
    assert_eq!(run(&claims, true, vec![&oversized], DpopMode::Optional), Err(DpopError::Malformed));
}

#[test]
fn error_codes_are_distinct() {
    let codes: std::collections::HashSet<_> = DpopError::ALL.iter().map(|e| e.code()).collect();
    assert_eq!(codes.len(), DpopError::ALL.len());
    assert!(DpopError::ALL.iter().all(|e| e.code().starts_with("dpop_") && !e.message().is_empty()));
}
