//! Unit tests of the JWKS cache state machine: leases, refresh, retries, stale keys, discovery, races.

use super::fetch::refresh_jitter_ms;
use super::shared::Lease;
use super::*;
use crate::config::Config;
use crate::fakes::MemoryStore;
use crate::ids::ProviderId;
use crate::testkeys;
use serde_json::json;

const REFRESH: u64 = 5 * 60 * 1000;

const STALE: u64 = 60 * 60 * 1000;

const KID_INTERVAL: u64 = 30_000;

const ME: Worker = Worker { id: 1, wake_token: Some(11) };

const OTHER: Worker = Worker { id: 2, wake_token: Some(22) };

const ISSUER: &str = "https://idp.example/realms/shop";

fn config_with(rule: serde_json::Value) -> Config {
    let inline = json!({"keys": [testkeys::jwk(testkeys::key(0), "a")]}).to_string();
    Config::parse(json!({"jwtRules": [rule, {"issuer": "inline", "jwks": inline}]}).to_string().as_bytes())
        .expect("valid")
}

fn cache_for(config: &Config) -> JwksCache {
    JwksCache::new(config.key_sources(), config.max_jwks_bytes)
}

fn config() -> Config {
    config_with(json!({"issuer": ISSUER, "jwksUri": "https://idp.example:8443/certs", "timeout": "2s"}))
}

fn discovery_config() -> Config {
    config_with(json!({"issuer": ISSUER, "jwksCluster": "idp"}))
}

fn jwks(kids: &[(&str, usize)]) -> String {
    let keys: Vec<_> = kids.iter().map(|(kid, i)| testkeys::jwk(testkeys::key(*i), kid)).collect();
    json!({ "keys": keys }).to_string()
}

fn ok(body: &str) -> FetchResult<'_> {
    FetchResult::Response { status: 200, cache_control: None, body: body.as_bytes() }
}

fn state(cache: &JwksCache, kid: Option<&str>, now: u64) -> &'static str {
    match cache.state(ProviderId(0), kid, now, true) {
        KeyState::Ready(_) => "ready",
        KeyState::Pending => "pending",
        KeyState::Unavailable => "unavailable",
    }
}

fn fetch(plan: Plan) -> FetchRequest {
    match plan {
        Plan::Fetch(request) => request,
        other => panic!("expected a fetch, got {other:?}"),
    }
}

fn record(store: &MemoryStore) -> SharedRecord {
    let key = store.keys().next().expect("one record").to_string();
    let (bytes, _) = store.get(&key).expect("one record");
    SharedRecord::decode(&bytes)
}

/// A cache that fetched kid "a" at `now` (random 0: refresh exactly at REFRESH).
fn ready(store: &mut MemoryStore, worker: Worker, now: u64) -> JwksCache {
    let mut cache = cache_for(&config());
    cache.ensure_shared(store);
    let request = fetch(cache.plan(store, ProviderId(0), worker, false, now));
    let outcome = cache.on_fetch_result(store, worker, &request, ok(&jwks(&[("a", 0)])), now, 0);
    assert!(matches!(outcome.report, FetchReport::Updated { keys: 1, .. }), "{outcome:?}");
    cache
}

#[test]
fn the_first_fetch_is_due_at_once_and_held_by_one_worker() {
    let mut store = MemoryStore::default();
    let mut mine = cache_for(&config());
    let mut theirs = cache_for(&config());
    mine.ensure_shared(&mut store);
    theirs.ensure_shared(&mut store);
    assert_eq!(store.writes, 1, "the record is created once");
    assert_eq!(mine.remote_providers(), vec![ProviderId(0)]);
    assert_eq!(mine.state(ProviderId(1), Some("a"), 0, true).ready_count(), Some(1), "inline keys need no fetch");
    // Before any fetch, requests wait for the first one.
    assert_eq!(state(&mine, Some("a"), 1_000), "pending");

    let request = fetch(mine.plan(&mut store, ProviderId(0), ME, false, 1_000));
    assert_eq!(
        request,
        FetchRequest {
            provider: ProviderId(0),
            kind: FetchKind::Jwks,
            reason: FetchReason::Initial,
            uri: "https://idp.example:8443/certs".into(),
            cluster: "outbound|8443||idp.example".into(),
            authority: "idp.example:8443".into(),
            path: "/certs".into(),
            timeout_ms: 2_000,
        }
    );
    assert_eq!(record(&store).lease, Some(Lease { owner: ME.id, until_ms: 1_000 + 2_000 + LEASE_GRACE_MS }));
    // The other worker neither fetches nor plans again while the lease holds...
    assert_eq!(theirs.plan(&mut store, ProviderId(0), OTHER, false, 1_001), Plan::Idle);
    assert_eq!(mine.plan(&mut store, ProviderId(0), ME, false, 1_001), Plan::Idle);
    // ...and when it has requests waiting, it joins the wake list (once).
    assert_eq!(theirs.plan(&mut store, ProviderId(0), OTHER, true, 1_002), Plan::Wait);
    assert_eq!(theirs.plan(&mut store, ProviderId(0), OTHER, true, 1_003), Plan::Wait);
    assert_eq!(record(&store).waiters, vec![22]);
    assert_eq!(state(&theirs, Some("a"), 1_003), "pending");

    let outcome = mine.on_fetch_result(&mut store, ME, &request, ok(&jwks(&[("a", 0)])), 2_000, 0);
    assert_eq!(outcome.report, FetchReport::Updated { keys: 1, skipped: vec![], refresh_in_ms: REFRESH });
    assert_eq!(outcome.wake, vec![22], "the waiting worker is woken");
    assert_eq!(outcome.next, None);
    assert_eq!(state(&mine, Some("a"), 2_000), "ready");
    // The other worker gets the keys from the shared record, without fetching.
    assert_eq!(theirs.completions(ProviderId(0)), 0);
    assert_eq!(theirs.sync(&store, ProviderId(0)), Some(1));
    assert_eq!(theirs.completions(ProviderId(0)), 1);
    assert_eq!(state(&theirs, Some("a"), 2_000), "ready");
    assert_eq!(theirs.keys_in_use(ProviderId(0), 2_000), 1);
    assert_eq!(theirs.sync(&store, ProviderId(0)), None, "no new version");
    let shared = record(&store);
    assert_eq!((shared.keys_version, shared.lease, shared.waiters.len()), (1, None, 0));
}

#[test]
fn keys_refresh_in_the_background_and_requests_never_wait_for_it() {
    let mut store = MemoryStore::default();
    let mut cache = ready(&mut store, ME, 0);
    assert_eq!(cache.plan(&mut store, ProviderId(0), ME, false, REFRESH - 1), Plan::Idle);
    let request = fetch(cache.plan(&mut store, ProviderId(0), ME, false, REFRESH));
    assert_eq!(request.reason, FetchReason::Refresh);
    assert_eq!(state(&cache, Some("a"), REFRESH), "ready", "old keys serve while the refresh runs");
    let outcome = cache.on_fetch_result(&mut store, ME, &request, ok(&jwks(&[("b", 1)])), REFRESH + 10, 0);
    assert!(matches!(outcome.report, FetchReport::Updated { keys: 1, .. }));
    assert_eq!(cache.keys_in_use(ProviderId(0), REFRESH + 10), 1);
    assert_eq!(state(&cache, Some("b"), REFRESH + 10), "ready");
    assert_eq!(record(&store).keys_version, 2);
    assert_eq!(cache.at(REFRESH + 10).keys_version(ProviderId(0)), Some(2));
    // The same keys again: a refresh, not a new version (cached verifications stay valid).
    let request = fetch(cache.plan(&mut store, ProviderId(0), ME, false, 2 * REFRESH + 10));
    let outcome = cache.on_fetch_result(&mut store, ME, &request, ok(&jwks(&[("b", 1)])), 2 * REFRESH + 20, 0);
    assert!(matches!(outcome.report, FetchReport::Updated { keys: 1, .. }));
    assert_eq!(record(&store).keys_version, 2);
    assert_eq!(cache.at(2 * REFRESH + 20).keys_version(ProviderId(0)), Some(2));
    assert_eq!(
        cache.at(2 * REFRESH + 20 + REFRESH + STALE).keys_version(ProviderId(0)),
        None,
        "expired keys have no version"
    );
}

#[test]
fn refresh_is_jittered_by_up_to_a_tenth() {
    let mut store = MemoryStore::default();
    let mut cache = cache_for(&config());
    let request = fetch(cache.plan(&mut store, ProviderId(0), ME, false, 0));
    let outcome = cache.on_fetch_result(&mut store, ME, &request, ok(&jwks(&[("a", 0)])), 0, REFRESH / 10);
    assert_eq!(outcome.report, FetchReport::Updated { keys: 1, skipped: vec![], refresh_in_ms: REFRESH * 9 / 10 });
    assert_eq!(record(&store).next_fetch_ms, REFRESH * 9 / 10);
    assert_eq!(record(&store).keys_expire_ms, REFRESH + STALE, "expiry is not jittered");
    assert_eq!(refresh_jitter_ms(1_000, 7), 7);
    assert_eq!(refresh_jitter_ms(1_000, 101), 0);
}

#[test]
fn cache_control_max_age_shortens_the_refresh_down_to_a_floor() {
    assert_eq!(refresh_interval_ms(REFRESH, None), REFRESH);
    assert_eq!(refresh_interval_ms(REFRESH, Some("no-cache")), REFRESH, "no-cache is ignored");
    assert_eq!(refresh_interval_ms(REFRESH, Some("public, max-age=120")), 120_000);
    assert_eq!(refresh_interval_ms(REFRESH, Some("Max-Age=\"90\", must-revalidate")), 90_000);
    assert_eq!(refresh_interval_ms(REFRESH, Some("max-age=86400")), REFRESH, "cacheDuration is the most");
    assert_eq!(refresh_interval_ms(REFRESH, Some("max-age=0")), MAX_AGE_FLOOR_MS);
    assert_eq!(refresh_interval_ms(20_000, Some("max-age=1")), 2_000, "a tenth of a short cacheDuration");
    assert_eq!(refresh_interval_ms(REFRESH, Some("max-age=99999999999999999999999")), REFRESH);
    for ignored in ["max-age=", "max-age=-5", "max-age=5s", "s-maxage=5", "max-age"] {
        assert_eq!(refresh_interval_ms(REFRESH, Some(ignored)), REFRESH, "{ignored}");
    }

    let mut store = MemoryStore::default();
    let mut cache = cache_for(&config());
    let request = fetch(cache.plan(&mut store, ProviderId(0), ME, false, 0));
    let body = jwks(&[("a", 0)]);
    let result = FetchResult::Response { status: 200, cache_control: Some("max-age=60"), body: body.as_bytes() };
    let outcome = cache.on_fetch_result(&mut store, ME, &request, result, 0, 0);
    assert!(matches!(outcome.report, FetchReport::Updated { refresh_in_ms: 60_000, .. }), "{outcome:?}");
    assert_eq!(record(&store).keys_expire_ms, 60_000 + STALE);
}

#[test]
fn failed_refreshes_keep_the_keys_and_back_off_with_jitter() {
    let mut store = MemoryStore::default();
    let mut cache = ready(&mut store, ME, 0);
    let mut now = REFRESH;
    for (failure, ceiling) in
        [(1u32, 1_000u64), (2, 2_000), (3, 4_000), (4, 8_000), (5, 16_000), (6, 30_000), (7, 30_000)]
    {
        let request = fetch(cache.plan(&mut store, ProviderId(0), ME, false, now));
        assert_eq!(request.reason, if failure == 1 { FetchReason::Refresh } else { FetchReason::Retry });
        let outcome = cache.on_fetch_result(&mut store, ME, &request, FetchResult::NoResponse, now, u64::MAX);
        let FetchReport::Failed { error, retry_in_ms, kept_previous_keys: true } = outcome.report else {
            panic!("{outcome:?}")
        };
        assert_eq!(error.code(), "jwks_fetch_no_response");
        assert!(retry_in_ms >= ceiling / 2 && retry_in_ms <= ceiling, "{failure}: {retry_in_ms}");
        assert_eq!(state(&cache, Some("a"), now), "ready", "stale keys still serve");
        assert_eq!(cache.plan(&mut store, ProviderId(0), ME, false, now + retry_in_ms - 1), Plan::Idle);
        now += retry_in_ms;
    }
    assert_eq!(record(&store).failures, 7);
    // Success resets the backoff.
    let request = fetch(cache.plan(&mut store, ProviderId(0), ME, false, now));
    cache.on_fetch_result(&mut store, ME, &request, ok(&jwks(&[("a", 0)])), now, 0);
    assert_eq!(record(&store).failures, 0);
}

#[test]
fn retry_delay_has_equal_jitter_and_caps_at_the_cache_duration() {
    assert_eq!(retry_delay_ms(REFRESH, 1, 0), 500);
    assert_eq!(retry_delay_ms(REFRESH, 1, 500), 1_000);
    assert_eq!(retry_delay_ms(REFRESH, 1, 501), 500, "the random value wraps into range");
    assert_eq!(retry_delay_ms(REFRESH, 3, 1_000), 3_000);
    assert_eq!(retry_delay_ms(REFRESH, 40, 0), RETRY_MAX_MS / 2);
    assert_eq!(retry_delay_ms(2_000, 10, 1_000), 2_000, "never slower than the refresh");
    assert_eq!(retry_delay_ms(1_000, 1, 0), 500);
}

#[test]
fn stale_keys_expire_after_stale_if_error() {
    let mut store = MemoryStore::default();
    let mut cache = ready(&mut store, ME, 0);
    let mut now = REFRESH;
    while now < REFRESH + STALE + RETRY_MAX_MS {
        if let Plan::Fetch(request) = cache.plan(&mut store, ProviderId(0), ME, false, now) {
            let failed = FetchResult::Response { status: 503, cache_control: None, body: b"" };
            let outcome = cache.on_fetch_result(&mut store, ME, &request, failed, now, 0);
            let FetchReport::Failed { kept_previous_keys, error, .. } = outcome.report else { panic!() };
            assert_eq!(error.to_string(), "https://idp.example:8443/certs answered HTTP 503");
            assert_eq!(kept_previous_keys, now < REFRESH + STALE);
        }
        let expected = if now < REFRESH + STALE { "ready" } else { "unavailable" };
        assert_eq!(state(&cache, Some("a"), now), expected, "at {now}");
        now += 1_000;
    }
    assert_eq!(cache.keys_in_use(ProviderId(0), now), 0);
    // Recovery: the next retry brings keys back.
    let request = loop {
        if let Plan::Fetch(request) = cache.plan(&mut store, ProviderId(0), ME, false, now) {
            break request;
        }
        now += 1_000;
    };
    cache.on_fetch_result(&mut store, ME, &request, ok(&jwks(&[("a", 0)])), now, 0);
    assert_eq!(state(&cache, Some("a"), now), "ready");
}

#[test]
fn without_keys_a_failure_makes_requests_fail_fast_until_recovery() {
    let mut store = MemoryStore::default();
    let mut cache = cache_for(&config());
    let request = fetch(cache.plan(&mut store, ProviderId(0), ME, true, 0));
    assert_eq!(state(&cache, Some("a"), 0), "pending", "the first fetch is worth waiting for");
    let outcome = cache.on_fetch_result(&mut store, ME, &request, ok("<html>"), 10, 0);
    let FetchReport::Failed { error, kept_previous_keys: false, retry_in_ms } = outcome.report else { panic!() };
    assert_eq!(error.code(), "jwks_not_json");
    assert_eq!(state(&cache, Some("a"), 10), "unavailable");
    assert_eq!(state(&cache, None, 10), "unavailable");
    // A retry in flight is not waited for either.
    let retry = fetch(cache.plan(&mut store, ProviderId(0), ME, false, 10 + retry_in_ms));
    assert_eq!(retry.reason, FetchReason::Retry);
    assert_eq!(state(&cache, Some("a"), 10 + retry_in_ms), "unavailable");
    cache.on_fetch_result(&mut store, ME, &retry, ok(&jwks(&[("a", 0)])), 20 + retry_in_ms, 0);
    assert_eq!(state(&cache, Some("a"), 20 + retry_in_ms), "ready");
}

#[test]
fn an_unknown_kid_triggers_one_refetch_per_interval() {
    let mut store = MemoryStore::default();
    let mut cache = ready(&mut store, ME, 0);
    let mut theirs = cache_for(&config());
    theirs.sync(&store, ProviderId(0));
    let now = 1_000;
    assert_eq!(state(&cache, Some("a"), now), "ready");
    assert_eq!(state(&cache, None, now), "ready", "no kid: every key is tried, no refetch");
    assert_eq!(state(&cache, Some("b"), now), "pending");
    assert!(
        matches!(cache.state(ProviderId(0), Some("b"), now, false), KeyState::Ready(_)),
        "without waiting, the keys there are"
    );

    let request = fetch(cache.plan(&mut store, ProviderId(0), ME, true, now));
    assert_eq!(request.reason, FetchReason::UnknownKid);
    // While it runs, another worker's unknown kids wait for it.
    theirs.sync(&store, ProviderId(0));
    assert_eq!(state(&theirs, Some("zzz"), now + 1), "pending");
    assert_eq!(theirs.plan(&mut store, ProviderId(0), OTHER, true, now + 1), Plan::Wait);
    let outcome = cache.on_fetch_result(&mut store, ME, &request, ok(&jwks(&[("b", 1)])), now + 5, 0);
    assert_eq!(outcome.wake, vec![22]);
    assert_eq!(state(&cache, Some("b"), now + 5), "ready", "the rotated key is in");
    assert!(
        matches!(cache.state(ProviderId(0), Some("a"), now + 5, true), KeyState::Ready(keys) if !keys.has_kid("a"))
    );

    // Within the interval, unknown kids are rejected without a fetch, in every worker.
    theirs.sync(&store, ProviderId(0));
    for (cache, worker) in [(&mut cache, ME), (&mut theirs, OTHER)] {
        assert_eq!(state(cache, Some("zzz"), now + KID_INTERVAL - 1), "ready");
        assert_eq!(cache.plan(&mut store, ProviderId(0), worker, true, now + KID_INTERVAL - 1), Plan::Settle);
    }
    assert_eq!(state(&cache, Some("zzz"), now + KID_INTERVAL), "pending");
    let again = fetch(theirs.plan(&mut store, ProviderId(0), OTHER, true, now + KID_INTERVAL));
    assert_eq!(again.reason, FetchReason::UnknownKid);
    assert_eq!(record(&store).last_kid_refetch_ms, Some(now + KID_INTERVAL));
    // The scheduled refresh is not moved by unknown-kid refetches.
    assert_eq!(record(&store).next_fetch_ms, now + 5 + REFRESH);
}

#[test]
fn the_wake_list_is_bounded_and_workers_without_a_queue_wait_on_ticks() {
    let mut store = MemoryStore::default();
    let mut cache = cache_for(&config());
    fetch(cache.plan(&mut store, ProviderId(0), ME, false, 0));
    for token in 0..(MAX_WAITERS as u32 + 10) {
        let worker = Worker { id: 100 + u64::from(token), wake_token: Some(1_000 + token) };
        assert_eq!(cache.plan(&mut store, ProviderId(0), worker, true, 1), Plan::Wait);
    }
    let queueless = Worker { id: 5, wake_token: None };
    assert_eq!(cache.plan(&mut store, ProviderId(0), queueless, true, 1), Plan::Wait);
    assert_eq!(record(&store).waiters.len(), MAX_WAITERS);
}

#[test]
fn a_due_fetch_is_not_counted_as_an_unknown_kid_refetch() {
    let mut store = MemoryStore::default();
    let mut cache = ready(&mut store, ME, 0);
    let request = fetch(cache.plan(&mut store, ProviderId(0), ME, true, REFRESH));
    assert_eq!(request.reason, FetchReason::Refresh);
    assert_eq!(record(&store).last_kid_refetch_ms, None);
}

#[test]
fn a_dead_lease_holder_is_taken_over_and_its_late_result_dropped() {
    let mut store = MemoryStore::default();
    let mut mine = cache_for(&config());
    let mut theirs = cache_for(&config());
    let request = fetch(mine.plan(&mut store, ProviderId(0), ME, false, 0));
    assert_eq!(theirs.plan(&mut store, ProviderId(0), OTHER, true, 0), Plan::Wait);
    let lease_end = 2_000 + LEASE_GRACE_MS;
    assert_eq!(theirs.plan(&mut store, ProviderId(0), OTHER, true, lease_end - 1), Plan::Wait);
    let takeover = fetch(theirs.plan(&mut store, ProviderId(0), OTHER, true, lease_end));
    assert_eq!(takeover.reason, FetchReason::Initial);
    let late = mine.on_fetch_result(&mut store, ME, &request, ok(&jwks(&[("a", 0)])), lease_end + 1, 0);
    assert_eq!(late, FetchOutcome { report: FetchReport::Superseded, next: None, wake: vec![] });
    assert_eq!(record(&store).keys_version, 0);
    let outcome = theirs.on_fetch_result(&mut store, OTHER, &takeover, ok(&jwks(&[("a", 0)])), lease_end + 2, 0);
    assert!(matches!(outcome.report, FetchReport::Updated { .. }));
    assert_eq!(outcome.wake, Vec::<u32>::new(), "its own token is not woken through the queue");
}

#[test]
fn a_late_result_under_an_untaken_expired_lease_still_counts() {
    let mut store = MemoryStore::default();
    let mut cache = cache_for(&config());
    let request = fetch(cache.plan(&mut store, ProviderId(0), ME, false, 0));
    let outcome = cache.on_fetch_result(&mut store, ME, &request, ok(&jwks(&[("a", 0)])), 60_000, 0);
    assert!(matches!(outcome.report, FetchReport::Updated { .. }));
}

#[test]
fn compare_and_swap_conflicts_are_retried() {
    /// A store where another worker writes just before each of our first `conflicts` writes.
    struct Racy {
        inner: MemoryStore,
        conflicts: usize,
    }
    impl SharedStore for Racy {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.inner.get(key)
        }
        fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
            if self.conflicts > 0 && cas.is_some() {
                self.conflicts -= 1;
                let (current, _) = self.inner.get(key).expect("record");
                let mut other = SharedRecord::decode(&current);
                other.waiters.push(99);
                self.inner.set(key, &other.encode(), None)?;
            }
            self.inner.set(key, value, cas)
        }
    }
    let mut store = Racy { inner: MemoryStore::default(), conflicts: 3 };
    let mut cache = cache_for(&config());
    cache.ensure_shared(&mut store);
    let request = fetch(cache.plan(&mut store, ProviderId(0), ME, false, 0));
    let shared = record(&store.inner);
    assert_eq!(shared.lease.map(|l| l.owner), Some(ME.id));
    assert_eq!(shared.waiters, vec![99, 99, 99], "the concurrent writes survive");

    store.conflicts = MAX_CAS_ATTEMPTS;
    let outcome = cache.on_fetch_result(&mut store, ME, &request, ok(&jwks(&[("a", 0)])), 1, 0);
    assert_eq!(outcome.report, FetchReport::Superseded, "gives up after {MAX_CAS_ATTEMPTS} lost races");
}

#[test]
fn discovery_comes_first_then_the_key_set_it_names() {
    let mut store = MemoryStore::default();
    let mut cache = cache_for(&discovery_config());
    let discovery = fetch(cache.plan(&mut store, ProviderId(0), ME, false, 0));
    assert_eq!(discovery.kind, FetchKind::Discovery);
    assert_eq!(
        (discovery.cluster.as_str(), discovery.authority.as_str(), discovery.path.as_str()),
        ("idp", "idp.example", "/realms/shop/.well-known/openid-configuration")
    );
    let document = json!({"issuer": ISSUER, "jwks_uri": "https://keys.example:9443/shop/certs"}).to_string();
    let outcome = cache.on_fetch_result(&mut store, ME, &discovery, ok(&document), 100, 0);
    assert_eq!(outcome.report, FetchReport::Discovered { jwks_uri: "https://keys.example:9443/shop/certs".into() });
    let keys = outcome.next.expect("the key set is fetched next");
    assert_eq!(
        (keys.kind, keys.cluster.as_str(), keys.authority.as_str(), keys.path.as_str()),
        (FetchKind::Jwks, "idp", "keys.example:9443", "/shop/certs"),
        "jwksCluster applies to the discovered URI too"
    );
    assert_eq!(record(&store).lease.map(|l| l.until_ms), Some(100 + 5_000 + LEASE_GRACE_MS), "lease extended");
    assert_eq!(state(&cache, Some("a"), 100), "pending");
    let outcome = cache.on_fetch_result(&mut store, ME, &keys, ok(&jwks(&[("a", 0)])), 200, 0);
    assert!(matches!(outcome.report, FetchReport::Updated { keys: 1, .. }));
    // The refresh reuses the discovered URI.
    let refresh = fetch(cache.plan(&mut store, ProviderId(0), ME, false, 200 + REFRESH));
    assert_eq!((refresh.kind, refresh.uri.as_str()), (FetchKind::Jwks, "https://keys.example:9443/shop/certs"));
    // A failed key fetch sends the next attempt back to discovery.
    cache.on_fetch_result(&mut store, ME, &refresh, FetchResult::NoResponse, 300 + REFRESH, 0);
    let retry = fetch(cache.plan(&mut store, ProviderId(0), ME, false, 300 + REFRESH + RETRY_BASE_MS));
    assert_eq!(retry.kind, FetchKind::Discovery);
    assert_eq!(state(&cache, Some("a"), 300 + REFRESH), "ready", "keys kept meanwhile");
}

#[test]
fn discovered_uri_without_jwks_cluster_uses_the_outbound_cluster_of_its_host() {
    let mut store = MemoryStore::default();
    let mut cache = cache_for(&config_with(json!({"issuer": ISSUER})));
    let discovery = fetch(cache.plan(&mut store, ProviderId(0), ME, false, 0));
    assert_eq!(discovery.cluster, "outbound|443||idp.example");
    let document = json!({"issuer": ISSUER, "jwks_uri": "http://keys.example/certs"}).to_string();
    let keys = cache.on_fetch_result(&mut store, ME, &discovery, ok(&document), 1, 0).next.expect("next");
    assert_eq!(keys.cluster, "outbound|80||keys.example");
}

#[test]
fn a_bad_discovery_document_is_a_failed_fetch() {
    let mut store = MemoryStore::default();
    let mut cache = cache_for(&discovery_config());
    let discovery = fetch(cache.plan(&mut store, ProviderId(0), ME, true, 0));
    let huge = FetchResult::TooLarge { status: 200, size: 1 << 30 };
    let outcome = cache.on_fetch_result(&mut store, ME, &discovery, huge, 1, 0);
    let FetchReport::Failed { error, .. } = &outcome.report else { panic!() };
    assert_eq!(error.code(), "discovery_too_large");
    let big_error_page = FetchResult::TooLarge { status: 502, size: 1 << 30 };
    let discovery = fetch(cache.plan(&mut store, ProviderId(0), ME, true, 10_000));
    let outcome = cache.on_fetch_result(&mut store, ME, &discovery, big_error_page, 10_001, 0);
    let FetchReport::Failed { error, .. } = &outcome.report else { panic!() };
    assert_eq!(error.code(), "jwks_fetch_http_status");
    let discovery = fetch(cache.plan(&mut store, ProviderId(0), ME, true, 20_000));
    let impostor = json!({"issuer": "https://evil.example", "jwks_uri": "https://evil.example/certs"}).to_string();
    let outcome = cache.on_fetch_result(&mut store, ME, &discovery, ok(&impostor), 20_001, 0);
    let FetchReport::Failed { error, kept_previous_keys: false, .. } = &outcome.report else { panic!() };
    assert_eq!(error.code(), "discovery_issuer_mismatch");
    assert_eq!(outcome.next, None);
    assert_eq!(state(&cache, Some("a"), 1), "unavailable");
    assert_eq!(record(&store).jwks_uri, None);
}

#[test]
fn hostile_key_sets_fail_or_skip_keys_with_reasons() {
    let good = testkeys::jwk(testkeys::key(0), "good");
    let cases = [
        (vec![b' '; jwks::MAX_JWKS_BYTES + 1], Err("jwks_too_large")),
        (vec![], Err("jwks_too_large")),
        (b"{\"keys\": [".to_vec(), Err("jwks_not_json")),
        (json!({"keys": [{"kty": "EC", "kid": "e"}]}).to_string().into_bytes(), Err("jwks_no_usable_key")),
        (json!({"keys": [good.clone(), good.clone()]}).to_string().into_bytes(), Ok("duplicate kid")),
    ];
    for (body, expected) in cases {
        let mut store = MemoryStore::default();
        let mut cache = cache_for(&config());
        let request = fetch(cache.plan(&mut store, ProviderId(0), ME, false, 0));
        let result = if body.is_empty() {
            FetchResult::TooLarge { status: 200, size: 10_000_000 }
        } else {
            FetchResult::Response { status: 200, cache_control: None, body: &body }
        };
        let outcome = cache.on_fetch_result(&mut store, ME, &request, result, 1, 0);
        match (expected, outcome.report) {
            (Err(code), FetchReport::Failed { error, .. }) => assert_eq!(error.code(), code),
            (Ok(reason), FetchReport::Updated { keys: 1, skipped, .. }) => {
                assert!(skipped.join(" ").contains(reason), "{skipped:?}")
            }
            (expected, report) => panic!("{expected:?}: {report:?}"),
        }
    }
}

#[test]
fn an_unreadable_record_is_replaced() {
    let mut store = MemoryStore::default();
    let cache = cache_for(&config());
    cache.ensure_shared(&mut store);
    let key = store.keys().next().expect("key").to_string();
    assert!(
        key.starts_with(SHARED_KEY_PREFIX)
            && key.ends_with("outbound|8443||idp.example https://idp.example:8443/certs")
    );
    store.set(&key, b"garbage", None).expect("set");
    let mut cache = cache;
    assert_eq!(cache.sync(&store, ProviderId(0)), None);
    assert!(matches!(cache.plan(&mut store, ProviderId(0), ME, false, 0), Plan::Fetch(_)));
    assert!(record(&store).lease.is_some());
}

impl KeyState<'_> {
    fn ready_count(&self) -> Option<usize> {
        match self {
            KeyState::Ready(keys) => Some(keys.keys.len()),
            _ => None,
        }
    }
}
