//! Unit tests of the scheduler: parking, deadlines, fetches across workers, and what gets reported.

use super::*;
use crate::fakes::{EnvoyVerifySignature, MemoryStore};
use crate::testkeys;
use serde_json::{json, Value};

const NOW_MS: u64 = 1_800_000_000_000;
const ISSUER: &str = "https://idp.example/realms/shop";
const TIMEOUT_MS: u64 = 2_000;

fn config() -> Config {
    let rule = json!({"issuer": ISSUER, "jwksUri": "https://idp.example/certs", "timeout": "2s"});
    let policy = json!({"name": "users", "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]});
    Config::parse(json!({"jwtRules": [rule], "policies": [policy]}).to_string().as_bytes()).expect("valid")
}

fn worker(id: u64) -> Worker {
    Worker { id, wake_token: Some(100 + id as u32) }
}

fn scheduler(store: &mut MemoryStore, id: u64) -> Scheduler {
    let random = (Random::seeded(id), Some([id as u8; 16]));
    Scheduler::new(config(), worker(id), random, store, Box::new(EnvoyVerifySignature::default()), NOW_MS)
}

fn jwks(kid: &str) -> String {
    json!({"keys": [testkeys::jwk(testkeys::key(0), kid)]}).to_string()
}

fn token(kid: &str) -> String {
    let payload = json!({"iss": ISSUER, "sub": "alice", "exp": NOW_MS / 1000 + 300});
    testkeys::sign(&json!({"alg": "RS256", "kid": kid}), &payload, 0)
}

fn request(token: &str) -> Request {
    Request::from_header_pairs(vec![
        (":method".into(), "GET".into()),
        (":path".into(), "/orders".into()),
        (":authority".into(), "shop".into()),
        ("authorization".into(), format!("Bearer {token}")),
    ])
}

fn ok(body: &str) -> FetchResult<'_> {
    FetchResult::Response { status: 200, cache_control: None, body: body.as_bytes() }
}

fn status(decision: &Decision) -> u32 {
    match decision {
        Decision::Allow { .. } => 200,
        Decision::Deny { denial, realm, .. } => denial.response(realm).status,
        Decision::Bound { .. } | Decision::Proven { .. } => 0,
    }
}

fn reason(decision: &Decision) -> &'static str {
    match decision {
        Decision::Allow { .. } => "allowed",
        Decision::Deny { denial, .. } => denial.code(),
        Decision::Bound { .. } => "bound",
        Decision::Proven { .. } => "proven",
    }
}

fn dispatches(effects: &[Effect]) -> Vec<FetchRequest> {
    effects.iter().filter_map(|e| if let Effect::Dispatch(f) = e { Some(f.clone()) } else { None }).collect()
}

fn settled(effects: &[Effect]) -> Vec<(u32, u32, &'static str)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Settle { context_id, decision } => Some((*context_id, status(decision), reason(decision))),
            _ => None,
        })
        .collect()
}

/// `request` (context 7) parks for the keys' first fetch; the fetch lands; its settled decision.
fn settled_after_first_fetch(s: &mut Scheduler, store: &mut MemoryStore, request: Request) -> Decision {
    assert_eq!(s.on_request(store, 7, request, NOW_MS), None, "parked for the first fetch");
    start_fetch(s, store, NOW_MS + 1, 1);
    s.on_fetch_response(store, 1, ok(&jwks("a")), NOW_MS + 2);
    let settled = s.take_effects().into_iter().find_map(|e| match e {
        Effect::Settle { context_id: 7, decision } => Some(decision),
        _ => None,
    });
    settled.expect("settled")
}

/// Runs the worker's service and dispatches the one fetch it asks for as callout `token`.
fn start_fetch(s: &mut Scheduler, store: &mut MemoryStore, now_ms: u64, token: u32) -> FetchRequest {
    s.service(store, now_ms);
    let [fetch] = dispatches(&s.take_effects()).try_into().expect("exactly one fetch");
    s.dispatched(token, fetch.clone());
    fetch
}

#[test]
fn a_request_parks_for_the_first_fetch_and_is_settled_when_it_lands() {
    let mut store = MemoryStore::default();
    let mut s = scheduler(&mut store, 1);
    let effects = s.take_effects();
    assert_eq!(effects.first(), Some(&Effect::KeysInUse(ProviderId(0), 0)));
    // Nothing is checked with the host before the first token needs it, and the gauge is left
    // alone (another VM may have set it).
    assert!(!effects.iter().any(|e| matches!(e, Effect::HostCryptoAlgorithms(_))), "{effects:?}");
    assert!(matches!(&effects[1], Effect::Log(Level::Info, line) if line.starts_with("signature verification: RS256")));
    assert_eq!(s.on_request(&store, 7, request(&token("a")), NOW_MS), None, "parked");
    let effects = s.take_effects();
    assert!(effects.contains(&Effect::Kick(101)), "{effects:?}");
    assert!(effects.contains(&Effect::Count(Counter::RequestsWaitedForKeys, 1)), "{effects:?}");
    // A second parked request does not queue a second wake-up.
    assert_eq!(s.on_request(&store, 8, request(&token("a")), NOW_MS), None);
    assert!(!s.take_effects().contains(&Effect::Kick(101)));
    s.on_kick();

    start_fetch(&mut s, &mut store, NOW_MS + 1, 1);
    s.on_fetch_response(&mut store, 1, ok(&jwks("a")), NOW_MS + 2);
    let effects = s.take_effects();
    let mut done = settled(&effects);
    done.sort_unstable();
    assert_eq!(done, vec![(7, 200, "allowed"), (8, 200, "allowed")]);
    assert!(effects.contains(&Effect::Count(Counter::JwksFetchSuccess, 1)));
    assert!(effects.contains(&Effect::KeysInUse(ProviderId(0), 1)));
    // The first RS256 token checked the host for RS256 (once: the second token did not).
    let checks: Vec<_> = effects.iter().filter(|e| matches!(e, Effect::Log(_, l) if l.contains("check: "))).collect();
    assert!(
        matches!(checks[..], [Effect::Log(Level::Info, line)] if line == "verify_signature check: RS256 passed; the host verifies it"),
        "{checks:?}"
    );
    assert!(effects.contains(&Effect::HostCryptoAlgorithms(1)), "{effects:?}");
    // Allowed requests and cache lookups are batched for the tick, not counted one by one.
    assert!(!effects.iter().any(|e| matches!(e, Effect::Count(Counter::Allowed | Counter::JwksCacheMiss, _))));
    for effect in &effects {
        if let Effect::Settle { decision, .. } = effect {
            s.settled(decision);
        }
    }
    let counts = s.take_counts();
    assert!(counts.contains(&(Counter::Allowed, 2)), "{counts:?}");
    assert!(counts.contains(&(Counter::JwksCacheMiss, 2)), "{counts:?}");
    assert!(s.take_counts().is_empty());
}

#[test]
fn a_request_is_never_parked_beyond_its_deadline() {
    let mut store = MemoryStore::default();
    let mut s = scheduler(&mut store, 1);
    assert_eq!(s.on_request(&store, 7, request(&token("a")), NOW_MS), None);
    start_fetch(&mut s, &mut store, NOW_MS, 1);
    // The fetch never answers: one timeout and the lease grace later the request gets what there is.
    s.service(&mut store, NOW_MS + TIMEOUT_MS + LEASE_GRACE_MS - 1);
    assert!(settled(&s.take_effects()).is_empty());
    s.service(&mut store, NOW_MS + TIMEOUT_MS + LEASE_GRACE_MS);
    let effects = s.take_effects();
    assert_eq!(settled(&effects), vec![(7, 401, "jwks_fetch_failed")]);
    // Reported only once the host carries it out (its stream may have ended meanwhile).
    assert!(!effects.iter().any(|e| matches!(e, Effect::CountNamed(_))), "{effects:?}");
    let Some(Effect::Settle { decision, .. }) = effects.iter().find(|e| matches!(e, Effect::Settle { .. })) else {
        panic!("settled")
    };
    s.settled(decision);
    let report = s.take_effects();
    assert!(report.contains(&Effect::CountNamed(metrics::denied(401, "jwks_fetch_failed", None))), "{report:?}");
}

#[test]
fn a_failed_dispatch_is_a_failed_fetch_and_fails_the_waiting_requests_fast() {
    let mut store = MemoryStore::default();
    let mut s = scheduler(&mut store, 1);
    assert_eq!(s.on_request(&store, 7, request(&token("a")), NOW_MS), None);
    s.service(&mut store, NOW_MS);
    let [fetch] = dispatches(&s.take_effects()).try_into().expect("one fetch");
    s.dispatch_failed(&mut store, fetch, "BadArgument", NOW_MS);
    let effects = s.take_effects();
    assert_eq!(settled(&effects), vec![(7, 401, "jwks_fetch_failed")]);
    assert!(effects.iter().any(|e| matches!(e, Effect::Log(Level::Error, line) if line.contains("BadArgument"))));
    // With the provider down, new requests are refused at once instead of waiting.
    let decision = s.on_request(&store, 8, request(&token("a")), NOW_MS + 1).expect("decided");
    assert_eq!(reason(&decision), "jwks_fetch_failed");
}

#[test]
fn keys_another_worker_fetched_are_used_before_refusing_a_request() {
    let mut store = MemoryStore::default();
    let mut mine = scheduler(&mut store, 1);
    let mut theirs = scheduler(&mut store, 2);
    // This worker's first fetch fails: its view has no keys and a failure.
    assert_eq!(mine.on_request(&store, 7, request(&token("a")), NOW_MS), None);
    mine.service(&mut store, NOW_MS);
    let [fetch] = dispatches(&mine.take_effects()).try_into().expect("one fetch");
    mine.dispatch_failed(&mut store, fetch, "BadArgument", NOW_MS);
    mine.take_effects();
    // The other worker retries later and succeeds; this worker has not ticked since.
    let later = NOW_MS + 60_000;
    start_fetch(&mut theirs, &mut store, later, 5);
    theirs.on_fetch_response(&mut store, 5, ok(&jwks("a")), later);
    mine.take_counts();
    // The next request here re-reads the shared records instead of answering "keys unavailable".
    let decision = mine.on_request(&store, 8, request(&token("a")), later + 1).expect("decided");
    assert_eq!(status(&decision), 200);
    // Its lookup is counted once, as the miss it was when the request arrived.
    assert!(mine.take_counts().contains(&(Counter::JwksCacheMiss, 1)));
}

#[test]
fn a_finished_fetch_wakes_the_other_workers_waiting_for_it() {
    let mut store = MemoryStore::default();
    let mut mine = scheduler(&mut store, 1);
    let mut theirs = scheduler(&mut store, 2);
    assert_eq!(mine.on_request(&store, 7, request(&token("a")), NOW_MS), None);
    start_fetch(&mut mine, &mut store, NOW_MS, 1);
    // The other worker's request waits for the fetch in flight instead of starting its own.
    assert_eq!(theirs.on_request(&store, 9, request(&token("a")), NOW_MS + 1), None);
    theirs.service(&mut store, NOW_MS + 1);
    assert!(dispatches(&theirs.take_effects()).is_empty());
    mine.on_fetch_response(&mut store, 1, ok(&jwks("a")), NOW_MS + 2);
    let effects = mine.take_effects();
    assert!(effects.contains(&Effect::Wake(102)), "{effects:?}");
    // Woken, it loads the keys from the shared record and settles its request.
    theirs.on_kick();
    theirs.service(&mut store, NOW_MS + 3);
    assert_eq!(settled(&theirs.take_effects()), vec![(9, 200, "allowed")]);
}

#[test]
fn an_unknown_kid_is_refetched_once_and_then_refused() {
    let mut store = MemoryStore::default();
    let mut s = scheduler(&mut store, 1);
    start_fetch(&mut s, &mut store, NOW_MS, 1);
    s.on_fetch_response(&mut store, 1, ok(&jwks("a")), NOW_MS);
    s.take_effects();
    // A token with a kid the keys lack waits for one refetch.
    assert_eq!(s.on_request(&store, 7, request(&token("b")), NOW_MS + 10), None);
    s.service(&mut store, NOW_MS + 11);
    let effects = s.take_effects();
    assert!(effects.contains(&Effect::Count(Counter::JwksRefetchUnknownKid, 1)));
    let [fetch] = dispatches(&effects).try_into().expect("one fetch");
    assert_eq!(fetch.reason, FetchReason::UnknownKid);
    s.dispatched(2, fetch);
    s.on_fetch_response(&mut store, 2, ok(&jwks("a")), NOW_MS + 12);
    assert_eq!(settled(&s.take_effects()), vec![(7, 401, "jwks_kid_not_found")]);
    // Within the refetch interval, the next such token is refused at once.
    let decision = s.on_request(&store, 8, request(&token("b")), NOW_MS + 13).expect("decided");
    assert_eq!(reason(&decision), "jwks_kid_not_found");
}

#[test]
fn a_stream_that_ends_stops_waiting() {
    let mut store = MemoryStore::default();
    let mut s = scheduler(&mut store, 1);
    assert_eq!(s.on_request(&store, 7, request(&token("a")), NOW_MS), None);
    s.on_done(7);
    start_fetch(&mut s, &mut store, NOW_MS, 1);
    s.on_fetch_response(&mut store, 1, ok(&jwks("a")), NOW_MS + 1);
    assert!(settled(&s.take_effects()).is_empty());
}

#[test]
fn a_denial_is_logged_and_counted_with_its_reason_and_policy() {
    let mut store = MemoryStore::default();
    let mut s = scheduler(&mut store, 1);
    s.take_effects();
    let anonymous = Request::from_header_pairs(vec![(":method".into(), "GET".into()), (":path".into(), "/".into())]);
    let decision = s.on_request(&store, 7, anonymous, NOW_MS).expect("decided");
    assert_eq!(status(&decision), 401);
    let effects = s.take_effects();
    assert!(effects.contains(&Effect::CountNamed(metrics::denied(401, "jwt_missing", None))), "{effects:?}");
    assert!(effects.contains(&Effect::Log(
        Level::Info,
        "denied 401 reason=jwt_missing policy=- method=GET resource=http:///".into()
    )));
}

#[test]
fn only_the_debug_level_gets_a_line_per_allowed_request() {
    let mut store = MemoryStore::default();
    let mut s = scheduler(&mut store, 1);
    start_fetch(&mut s, &mut store, NOW_MS, 1);
    s.on_fetch_response(&mut store, 1, ok(&jwks("a")), NOW_MS);
    s.take_effects();
    let debug_lines =
        |effects: Vec<Effect>| effects.into_iter().filter(|e| matches!(e, Effect::Log(Level::Debug, _))).count();
    assert!(s.on_request(&store, 7, request(&token("a")), NOW_MS).is_some());
    assert_eq!(debug_lines(s.take_effects()), 0);
    s.set_debug_logging(true);
    assert!(s.on_request(&store, 8, request(&token("a")), NOW_MS).is_some());
    assert_eq!(debug_lines(s.take_effects()), 1);
    assert!(s.serves_requests());
    assert_eq!(s.token_cache_entries(), Some(1));
}

#[test]
fn running_out_of_keys_is_reported_once() {
    let mut store = MemoryStore::default();
    let mut s = scheduler(&mut store, 1);
    start_fetch(&mut s, &mut store, NOW_MS, 1);
    s.on_fetch_response(&mut store, 1, ok(&jwks("a")), NOW_MS);
    s.take_effects();
    // Refresh and every retry fail until the keys expire (cacheDuration 5m + staleIfError 1h).
    let mut now = NOW_MS;
    let mut token = 2;
    let expiry = NOW_MS + 5 * 60_000 + 60 * 60_000;
    let mut warnings = 0;
    while now <= expiry + 60_000 {
        now += 10_000;
        s.service(&mut store, now);
        for effect in s.take_effects() {
            match effect {
                Effect::Dispatch(fetch) => {
                    s.dispatched(token, fetch);
                    s.on_fetch_response(&mut store, token, FetchResult::NoResponse, now);
                    token += 1;
                }
                Effect::Log(Level::Warn, line) if line.contains("no usable keys any more") => warnings += 1,
                _ => {}
            }
        }
        for effect in s.take_effects() {
            if matches!(&effect, Effect::Log(Level::Warn, line) if line.contains("no usable keys any more")) {
                warnings += 1;
            }
        }
    }
    assert_eq!(warnings, 1);
    let decision = s.on_request(&store, 7, request(&token_for_now(now)), now).expect("decided");
    assert_eq!(reason(&decision), "jwks_fetch_failed");
}

fn token_for_now(now_ms: u64) -> String {
    let payload: Value = json!({"iss": ISSUER, "sub": "alice", "exp": now_ms / 1000 + 300});
    testkeys::sign(&json!({"alg": "RS256", "kid": "a"}), &payload, 0)
}

#[test]
fn random_values_spread_and_worker_ids_are_never_zero() {
    let mut random = Random::seeded(0);
    let values: Vec<u64> = (0..64).map(|_| random.next_u64()).collect();
    let mut distinct = values.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), values.len());
    assert!((0..64).all(|_| random.worker_id() != 0));
}

#[test]
fn a_bound_token_is_settled_by_the_certificate_and_reported_once() {
    let mut store = MemoryStore::default();
    let mut s = scheduler(&mut store, 1);
    assert_eq!(s.on_request(&store, 7, request(&token("a")), NOW_MS), None, "parked");
    start_fetch(&mut s, &mut store, NOW_MS + 1, 1);
    s.on_fetch_response(&mut store, 1, ok(&jwks("a")), NOW_MS + 2);
    s.take_effects();
    let digest = [0x5au8; 32];
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let payload = json!({"iss": ISSUER, "sub": "alice", "exp": NOW_MS / 1000 + 300,
                         "cnf": {"x5t#S256": testkeys::b64(digest)}});
    let bound = testkeys::sign(&json!({"alg": "RS256", "kid": "a"}), &payload, 0);
    for (presented, expected) in [
        (Some(hex.as_str()), (200, "allowed")),
        (Some(""), (401, "jwt_certificate_mismatch")),
        (None, (401, "jwt_certificate_mismatch")),
    ] {
        let decision = s.on_request(&store, 8, request(&bound), NOW_MS + 3).expect("decided");
        assert!(matches!(decision, Decision::Bound { thumbprint, .. } if thumbprint == digest), "{decision:?}");
        assert!(
            s.take_effects().iter().all(|e| !matches!(e, Effect::Log(..) | Effect::CountNamed(_))),
            "not yet reported"
        );
        let settled = s.bind(decision, presented.map(str::as_bytes));
        assert_eq!((status(&settled), reason(&settled)), expected, "{presented:?}");
        let effects = s.take_effects();
        let denials = effects.iter().filter(|e| matches!(e, Effect::CountNamed(_))).count();
        assert_eq!(denials, usize::from(expected.0 == 401), "reported once: {effects:?}");
        // Anything but a bound decision passes through untouched, and is not reported again.
        assert_eq!(s.bind(settled.clone(), None), settled);
        assert!(s.take_effects().is_empty());
    }
}

#[test]
fn a_parked_bound_token_is_bound_when_settled_and_reported_once() {
    let mut store = MemoryStore::default();
    let mut s = scheduler(&mut store, 1);
    s.take_effects();
    let digest = [0x11u8; 32];
    let payload = json!({"iss": ISSUER, "sub": "alice", "exp": NOW_MS / 1000 + 300,
                         "cnf": {"x5t#S256": testkeys::b64(digest)}});
    let bound = testkeys::sign(&json!({"alg": "RS256", "kid": "a"}), &payload, 0);
    let decision = settled_after_first_fetch(&mut s, &mut store, request(&bound));
    assert!(matches!(decision, Decision::Bound { .. }), "{decision:?}");
    // The host's order: `settled` (which leaves a bound decision alone), then `bind`.
    s.settled(&decision);
    assert!(s.take_effects().iter().all(|e| !matches!(e, Effect::Log(..) | Effect::CountNamed(_))));
    let chosen = s.bind(decision, None);
    assert_eq!((status(&chosen), reason(&chosen)), (401, "jwt_certificate_mismatch"));
    let effects = s.take_effects();
    assert_eq!(effects.iter().filter(|e| matches!(e, Effect::CountNamed(_))).count(), 1, "{effects:?}");
}

/// A token bound to the P-256 test key and a proof of it for `GET http://shop/orders` at `now`.
fn dpop_request(jti: &str, now_seconds: u64) -> Request {
    use crate::authn::dpop::{access_token_hash, jwk_thumbprint};
    use crate::keys::alg::Algorithm;
    let holder = testkeys::signing_key(Algorithm::Es256, 0);
    let jwk = holder.jwk("holder", None);
    let crate::json::Value::Object(jwk_map) = crate::json::Value::from(jwk.clone()) else { panic!("object") };
    let jkt = jwk_thumbprint(&jwk_map).expect("thumbprint");
    let payload =
        json!({"iss": ISSUER, "sub": "alice", "exp": NOW_MS / 1000 + 300, "cnf": {"jkt": testkeys::b64(jkt)}});
    let token = testkeys::sign(&json!({"alg": "RS256", "kid": "a"}), &payload, 0);
    let claims = json!({"jti": jti, "htm": "GET", "htu": "http://shop/orders", "iat": now_seconds,
                        "ath": access_token_hash(&token)});
    let proof = holder.sign_token(Algorithm::Es256, &json!({"typ": "dpop+jwt", "jwk": jwk}), &claims);
    Request::from_header_pairs(vec![
        (":method".into(), "GET".into()),
        (":path".into(), "/orders?page=2".into()),
        (":authority".into(), "shop".into()),
        (":scheme".into(), "http".into()),
        ("authorization".into(), format!("DPoP {token}")),
        ("dpop".into(), proof),
    ])
}

#[test]
fn a_dpop_proof_is_accepted_once_across_workers_and_reported_once() {
    let mut store = MemoryStore::default();
    let mut first = scheduler(&mut store, 1);
    let mut second = scheduler(&mut store, 2);
    assert_eq!(first.on_request(&store, 7, request(&token("a")), NOW_MS), None, "parked");
    start_fetch(&mut first, &mut store, NOW_MS + 1, 1);
    first.on_fetch_response(&mut store, 1, ok(&jwks("a")), NOW_MS + 2);
    second.service(&mut store, NOW_MS + 3);
    first.take_effects();
    second.take_effects();
    let now = NOW_MS + 4;
    let decision = first.on_request(&store, 8, dpop_request("jti-1", now / 1000), now).expect("decided");
    assert!(matches!(decision, Decision::Proven { .. }), "{decision:?}");
    assert_eq!(allowed_count(&mut first), 0, "not yet reported");
    let chosen = first.prove(&mut store, decision);
    assert_eq!((status(&chosen), reason(&chosen)), (200, "allowed"));
    assert_eq!(allowed_count(&mut first), 1, "reported once");
    // The same proof again, on the other worker, and on the first: refused, each reported once.
    for s in [&mut second, &mut first] {
        let decision = s.on_request(&store, 9, dpop_request("jti-1", now / 1000), now + 1).expect("decided");
        let chosen = s.prove(&mut store, decision);
        assert_eq!((status(&chosen), reason(&chosen)), (401, "dpop_proof_replayed"));
        let effects = s.take_effects();
        assert_eq!(effects.iter().filter(|e| matches!(e, Effect::CountNamed(_))).count(), 1, "{effects:?}");
        // Anything but a proven decision passes through untouched, and is not reported again.
        assert_eq!(s.prove(&mut store, chosen.clone()), chosen);
        assert!(s.take_effects().is_empty());
    }
    // A new proof of the same token holds, on either worker: the cached token is proven anew.
    let decision = second.on_request(&store, 10, dpop_request("jti-2", now / 1000), now + 2).expect("decided");
    assert_eq!(reason(&second.prove(&mut store, decision)), "allowed");
    // Without the proof, the cached token is refused.
    let mut bare = dpop_request("jti-3", now / 1000);
    bare.headers.retain(|(name, _)| name != "dpop");
    let decision = second.on_request(&store, 11, bare, now + 3).expect("decided");
    assert_eq!((status(&decision), reason(&decision)), (401, "dpop_proof_missing"));
}

#[test]
fn a_parked_dpop_request_is_proven_when_settled_and_reported_once() {
    let mut store = MemoryStore::default();
    let mut s = scheduler(&mut store, 1);
    s.take_effects();
    let decision = settled_after_first_fetch(&mut s, &mut store, dpop_request("jti-p", NOW_MS / 1000));
    // The host's order: `settled` (which leaves a proven decision alone), then `prove`.
    s.settled(&decision);
    assert_eq!(allowed_count(&mut s), 0, "not yet reported");
    let chosen = s.prove(&mut store, decision);
    assert_eq!(reason(&chosen), "allowed");
    assert_eq!(allowed_count(&mut s), 1, "reported once");
}

/// Allowed requests reported since the last call (a batched counter).
fn allowed_count(s: &mut Scheduler) -> u64 {
    s.take_counts().iter().filter(|(counter, _)| *counter == Counter::Allowed).map(|(_, n)| n).sum()
}

fn introspecting_config() -> Config {
    let introspection = json!({"endpoint": "https://idp.example/realms/shop/protocol/openid-connect/token/introspect",
                               "cluster": "idp", "clientId": "gateway", "clientSecret": "secret", "timeout": "2s"});
    let rule = json!({"issuer": ISSUER, "jwksUri": "https://idp.example/certs", "introspection": introspection});
    let policy = json!({"name": "users", "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]});
    Config::parse(json!({"jwtRules": [rule], "policies": [policy]}).to_string().as_bytes()).expect("valid")
}

fn introspecting(store: &mut MemoryStore, id: u64) -> Scheduler {
    let random = (Random::seeded(id), Some([id as u8; 16]));
    Scheduler::new(introspecting_config(), worker(id), random, store, Box::new(EnvoyVerifySignature::default()), NOW_MS)
}

fn introspections(effects: &[Effect]) -> Vec<IntrospectionCall> {
    effects.iter().filter_map(|e| if let Effect::Introspect(c) = e { Some(c.clone()) } else { None }).collect()
}

fn answer(body: Value) -> String {
    body.to_string()
}

#[test]
fn opaque_tokens_wait_for_one_introspection_per_worker_and_share_its_answer() {
    let mut store = MemoryStore::default();
    let mut first = introspecting(&mut store, 1);
    let mut second = introspecting(&mut store, 2);
    first.take_effects();
    // Three requests with one opaque token in one worker: parked, one call.
    for context_id in [7, 8, 9] {
        assert_eq!(first.on_request(&store, context_id, request("opaque-token-1"), NOW_MS), None, "parked");
    }
    assert!(introspections(&first.take_effects()).is_empty(), "dispatched from the root context only");
    first.service(&mut store, NOW_MS + 1);
    let [call] = introspections(&first.take_effects()).try_into().expect("exactly one call");
    assert!(call.body.starts_with("token=opaque-token-1&"));
    first.introspecting(41, call);
    assert!(first.expects(41));
    let body = answer(json!({"active": true, "sub": "alice-id", "exp": NOW_MS / 1000 + 300, "username": "alice"}));
    first.on_fetch_response(&mut store, 41, ok(&body), NOW_MS + 2);
    let settled = settled(&first.take_effects());
    assert_eq!(settled.len(), 3, "{settled:?}");
    assert!(settled.iter().all(|(_, status, _)| *status == 200), "{settled:?}");
    // The same token again in this worker: decided at once; in the other: from the shared answer.
    assert_eq!(first.on_request(&store, 10, request("opaque-token-1"), NOW_MS + 3).map(|d| status(&d)), Some(200));
    assert_eq!(second.on_request(&store, 11, request("opaque-token-1"), NOW_MS + 3).map(|d| status(&d)), Some(200));
    second.service(&mut store, NOW_MS + 4);
    assert!(introspections(&second.take_effects()).is_empty(), "no call for a shared answer");
}

#[test]
fn an_inactive_token_and_an_outage_are_refused() {
    let mut store = MemoryStore::default();
    let mut s = introspecting(&mut store, 1);
    s.take_effects();
    for (second, (token, callout, response)) in [
        ("revoked", 51, Some(answer(json!({"active": false})))),
        ("unanswered", 52, None),
        ("server-error", 53, Some("oops".to_string())),
    ]
    .into_iter()
    .enumerate()
    {
        // Each in a second of its own: after a failure, the rest of its second refuses at once.
        let at = NOW_MS + 10_000 * second as u64;
        assert_eq!(s.on_request(&store, callout, request(token), at), None);
        s.service(&mut store, at + 1);
        let [call] = introspections(&s.take_effects()).try_into().expect("one call");
        s.introspecting(callout, call);
        let result = match &response {
            Some(body) if body != "oops" => ok(body),
            Some(_) => FetchResult::Response { status: 500, cache_control: None, body: b"oops" },
            None => FetchResult::NoResponse,
        };
        s.on_fetch_response(&mut store, callout, result, at + 2);
        let settled = settled(&s.take_effects());
        let expected = if token == "revoked" { "introspection_inactive" } else { "introspection_failed" };
        assert_eq!(settled, vec![(callout, 401, expected)], "{token}");
    }
    // After the failure at NOW + 20 s: that second refuses any unknown opaque token without a
    // call; the next asks again (recovery needs nothing but time).
    let failed_at = NOW_MS + 20_000;
    for (context_id, token) in [(60, "unanswered"), (62, "never-seen")] {
        let decision = s.on_request(&store, context_id, request(token), failed_at + 500).map(|d| reason(&d));
        assert_eq!(decision, Some("introspection_failed"), "{token}");
    }
    s.service(&mut store, failed_at + 600);
    assert!(introspections(&s.take_effects()).is_empty(), "no call while the endpoint is down");
    // A worker waits for at most MAX_INTROSPECTIONS calls; beyond, tokens are refused at once.
    let later = NOW_MS + 60_000;
    for n in 0..MAX_INTROSPECTIONS as u32 {
        assert_eq!(s.on_request(&store, 1_000 + n, request(&format!("made-up-{n}")), later), None);
    }
    assert_eq!(
        s.on_request(&store, 2_000, request("one-too-many"), later).map(|d| reason(&d)),
        Some("introspection_failed")
    );
    s.service(&mut store, later + 2_000 + LEASE_GRACE_MS + 1);
    s.take_effects();
    let at = NOW_MS + 120_000;
    assert_eq!(s.on_request(&store, 61, request("unanswered"), at), None, "asked again");
    // A request that waits past its deadline is refused, never left hanging.
    s.service(&mut store, at + 2_000 + LEASE_GRACE_MS + 1);
    let settled = settled(&s.take_effects());
    assert_eq!(settled, vec![(61, 401, "introspection_failed")]);
}
