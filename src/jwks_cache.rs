//! JWKS cache state machine: which keys each issuer has, who fetches them and when, across every
//! worker VM of the proxy.
//!
//! Envoy runs one Wasm VM per worker thread, and each has its own memory. Doing what Istio and
//! most Wasm filters do (each VM fetches for itself) multiplies the load on the identity provider
//! and lets workers disagree about keys. Here the state of each remote key set lives once, in the
//! host's shared data, as a versioned `SharedRecord` updated only by compare-and-swap:
//!
//! - a fetch is started only by the worker that wins a *lease* in the record, so concurrent needs
//!   across all workers coalesce into one in-flight fetch; a lease outlives the fetch timeout by a
//!   grace period, so a worker that dies mid-fetch cannot block the others for long;
//! - the winner writes the keys it fetched into the record (a new version); the others load them
//!   from there, and the workers that parked requests on the fetch are listed in the record so
//!   the winner can wake them (the host does that with shared queues);
//! - refresh, retry with backoff and jitter, the unknown-`kid` refetch rate limit and the
//!   stale-if-error bound are all times in the record, so every worker sees the same schedule.
//!
//! Pure: the host passes `now`, fetch results, a random value for jitter and a `SharedStore`
//! (get and compare-and-swap set, which the host implements with shared data); this module
//! returns fetch requests, key states and what to log. Keys survive failed refreshes
//! (stale-if-error, bounded): a provider outage must not turn into rejected traffic while the keys
//! we hold still verify tokens.

use crate::authn::{KeyState, KeyStore};
use crate::config::{Config, HttpTarget, KeySource, RemoteJwks};
use crate::discovery::{self, DiscoveryError};
use crate::jwks::{self, JwksError, KeySet};
use serde::{Deserialize, Serialize};
use std::fmt;

/// First retry delay after a failed fetch; doubles per consecutive failure.
pub const RETRY_BASE_MS: u64 = 1_000;
/// Longest delay between retries (or `cacheDuration`, when that is shorter: retrying less often
/// than we would refresh makes no sense).
pub const RETRY_MAX_MS: u64 = 30_000;
/// A lease lasts the fetch timeout plus this, so a fetch that times out ends before its lease.
pub const LEASE_GRACE_MS: u64 = 1_000;
/// A `Cache-Control: max-age` shorter than `cacheDuration` shortens the refresh interval, but not
/// below this (or a tenth of `cacheDuration`, if smaller): an identity provider answering
/// `max-age=0` must not turn every proxy into a poller.
pub const MAX_AGE_FLOOR_MS: u64 = 30_000;
/// Shared-data keys of key-set records start with this; the version guards against reading
/// records written by an incompatible build of the filter in the same VM group.
pub const SHARED_KEY_PREFIX: &str = "jwt-authz/v1/jwks ";
/// Compare-and-swap attempts before an update gives up until the next tick.
const MAX_CAS_ATTEMPTS: usize = 16;
/// More wake tokens than this in one record are dropped (a VM group has one per worker).
const MAX_WAITERS: usize = 256;

// ---------------------------------------------------------------------------------------------
// The host's shared data, as the core sees it.

/// A compare-and-swap write lost to a concurrent writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CasMismatch;

/// Key-value storage shared by every worker VM, with Envoy's semantics: a read returns the value
/// and its compare-and-swap token; a write with a token fails if the value changed since; a write
/// without one (or of a key that does not exist yet) always succeeds.
pub trait SharedStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch>;
}

/// One worker VM: a random id (lease owner) and the shared-queue token that wakes it, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worker {
    pub id: u64,
    pub wake_token: Option<u32>,
}

/// The state of one remote key set, shared by all workers.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
struct SharedRecord {
    /// Bumped on every successful fetch; 0 until the first.
    keys_version: u64,
    /// The usable keys as a minimal JWKS document (`KeySet::to_jwks_json`).
    keys: Option<String>,
    /// Keys are not used after this (refresh interval + `staleIfError` after their fetch).
    keys_expire_ms: u64,
    /// When the next refresh or retry is due.
    next_fetch_ms: u64,
    /// Consecutive failed fetches.
    failures: u32,
    lease: Option<Lease>,
    /// When a refetch for an unknown `kid` last started (the rate limit).
    last_kid_refetch_ms: Option<u64>,
    /// Wake tokens of workers that parked requests on the fetch in flight.
    waiters: Vec<u32>,
    /// From OIDC discovery; cleared after a failed key fetch so the next attempt rediscovers.
    jwks_uri: Option<String>,
    /// Bumped on every finished fetch, good or bad: parked requests are settled when it moves.
    completions: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    owner: u64,
    until_ms: u64,
}

impl SharedRecord {
    /// An unreadable record (none of ours) reads as a fresh one; the next write replaces it.
    fn decode(bytes: &[u8]) -> SharedRecord {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn lease_active(&self, now_ms: u64) -> bool {
        self.lease.is_some_and(|lease| lease.until_ms > now_ms)
    }
}

/// Reads `key`, applies `transition`, and writes the result back by compare-and-swap, retrying
/// when another worker wrote in between. Returns the record as written (or as read, when the
/// transition changed nothing) and the transition's output; `None` after too many lost races.
fn update<T>(
    store: &mut dyn SharedStore,
    key: &str,
    mut transition: impl FnMut(SharedRecord) -> (SharedRecord, T),
) -> Option<(SharedRecord, T)> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (current, cas) = match store.get(key) {
            Some((bytes, cas)) => (SharedRecord::decode(&bytes), Some(cas)),
            None => (SharedRecord::default(), None),
        };
        let (next, output) = transition(current.clone());
        if next == current && cas.is_some() {
            return Some((next, output));
        }
        if store.set(key, &next.encode(), cas).is_ok() {
            return Some((next, output));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Fetches.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchKind {
    /// The issuer's OIDC discovery document, for its `jwks_uri`.
    Discovery,
    Jwks,
}

/// Why a fetch was started (for the log and the refetch counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchReason {
    Initial,
    Refresh,
    Retry,
    /// A token named a `kid` the keys do not have: the provider may have rotated its keys.
    UnknownKid,
}

/// A fetch the host should dispatch from a root context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub provider: usize,
    pub kind: FetchKind,
    pub reason: FetchReason,
    pub uri: String,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
}

/// What came back from a dispatched fetch.
#[derive(Debug, Clone, Copy)]
pub enum FetchResult<'a> {
    Response {
        status: u32,
        /// The `Cache-Control` header, if any.
        cache_control: Option<&'a str>,
        body: &'a [u8],
    },
    /// A response whose body is over the size limit (`limits.maxJwksBytes`): the host need not
    /// even copy it.
    TooLarge { status: u32, size: usize },
    /// Dispatch failed, timed out, or the connection broke.
    NoResponse,
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    NoResponse { uri: String, cluster: String },
    HttpStatus { uri: String, status: u32 },
    Jwks(JwksError),
    Discovery(DiscoveryError),
}

impl FetchError {
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::NoResponse { .. } => "jwks_fetch_no_response",
            FetchError::HttpStatus { .. } => "jwks_fetch_http_status",
            FetchError::Jwks(err) => err.code(),
            FetchError::Discovery(err) => err.code(),
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::NoResponse { uri, cluster } => {
                write!(f, "no response from {uri} (cluster {cluster:?}): timed out, refused or unknown cluster")
            }
            FetchError::HttpStatus { uri, status } => write!(f, "{uri} answered HTTP {status}"),
            FetchError::Jwks(err) => err.fmt(f),
            FetchError::Discovery(err) => err.fmt(f),
        }
    }
}

/// What a fetch result did, for the log and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchReport {
    Updated {
        keys: usize,
        skipped: Vec<String>,
        refresh_in_ms: u64,
    },
    Discovered {
        jwks_uri: String,
    },
    Failed {
        error: FetchError,
        retry_in_ms: u64,
        kept_previous_keys: bool,
    },
    /// The fetch outlived its lease and another worker took over: its result is dropped.
    Superseded,
}

/// The result of `on_fetch_result`: the report, the next fetch to dispatch (the key set, after
/// discovery), and the wake tokens of other workers waiting for this fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOutcome {
    pub report: FetchReport,
    pub next: Option<FetchRequest>,
    pub wake: Vec<u32>,
}

/// What a worker should do about one key set, from `plan`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// This worker holds the lease: dispatch the fetch.
    Fetch(FetchRequest),
    /// A fetch is in flight (here or in another worker, which will wake this one): keep waiting.
    Wait,
    /// Nothing is in flight and nothing may start: settle waiting requests with the keys we have.
    Settle,
    /// Nothing to do.
    Idle,
}

/// The refresh interval for keys fetched with `cache_control`: `cacheDuration`, shortened by a
/// smaller `max-age` down to a floor. `no-cache`, `no-store` and the like are ignored on purpose:
/// Keycloak sends `no-cache` on its JWKS, and honouring it would mean a fetch per request.
pub fn refresh_interval_ms(cache_duration_ms: u64, cache_control: Option<&str>) -> u64 {
    let Some(max_age_seconds) = cache_control.and_then(max_age) else {
        return cache_duration_ms;
    };
    let floor = MAX_AGE_FLOOR_MS.min(cache_duration_ms / 10);
    max_age_seconds.saturating_mul(1_000).max(floor).min(cache_duration_ms)
}

/// The `max-age` directive of a Cache-Control header (RFC 9111 §5.2.2.1), in seconds.
fn max_age(header: &str) -> Option<u64> {
    header.split(',').find_map(|directive| {
        let (name, value) = directive.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        let value = value.trim().trim_matches('"');
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // RFC 9111 §1.2.2: a delta-seconds too large to represent is "infinity".
        Some(value.parse::<u64>().unwrap_or(u64::MAX))
    })
}

/// Delay before retry number `failures` (1 for the first): exponential backoff with "equal
/// jitter": half the delay is fixed, half is random, so proxies that failed together do not
/// retry together, yet none retries sooner than half the backoff.
pub fn retry_delay_ms(cache_duration_ms: u64, failures: u32, random: u64) -> u64 {
    let cap = RETRY_MAX_MS.min(cache_duration_ms);
    let base = RETRY_BASE_MS.min(cap);
    let exponent = failures.saturating_sub(1).min(20);
    let ceiling = base.saturating_mul(1u64 << exponent).min(cap);
    let fixed = ceiling / 2;
    fixed + random % (ceiling - fixed + 1)
}

/// When to refresh keys fetched now: the interval less up to a tenth of it at random, so the
/// proxies of a fleet that started together do not all refresh in the same second.
fn refresh_jitter_ms(refresh_ms: u64, random: u64) -> u64 {
    random % (refresh_ms / 10 + 1)
}

// ---------------------------------------------------------------------------------------------
// The record's transitions.

/// What one worker wants from a key set when planning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wants {
    /// Requests are parked on this key set.
    waiting: bool,
    /// They wait because a token's `kid` is not in the keys.
    unknown_kid: bool,
}

fn plan_transition(
    source: &RemoteJwks,
    provider: usize,
    mut record: SharedRecord,
    worker: Worker,
    wants: Wants,
    now_ms: u64,
) -> (SharedRecord, Plan) {
    if let Some(lease) = record.lease.filter(|_| record.lease_active(now_ms)) {
        if !wants.waiting {
            return (record, Plan::Idle);
        }
        if let Some(token) = worker.wake_token {
            if lease.owner != worker.id && !record.waiters.contains(&token) && record.waiters.len() < MAX_WAITERS {
                record.waiters.push(token);
            }
        }
        return (record, Plan::Wait);
    }
    let due = now_ms >= record.next_fetch_ms;
    let kid_refetch_allowed = wants.unknown_kid
        && record
            .last_kid_refetch_ms
            .is_none_or(|last| now_ms >= last.saturating_add(source.unknown_kid_refetch_interval_ms));
    if !due && !kid_refetch_allowed {
        return (record, if wants.waiting { Plan::Settle } else { Plan::Idle });
    }
    let reason = if !due {
        record.last_kid_refetch_ms = Some(now_ms);
        FetchReason::UnknownKid
    } else if record.failures > 0 {
        FetchReason::Retry
    } else if record.keys_version == 0 {
        FetchReason::Initial
    } else {
        FetchReason::Refresh
    };
    let request = fetch_request(source, provider, &record, reason);
    record.lease = Some(Lease { owner: worker.id, until_ms: lease_end(now_ms, request.timeout_ms) });
    (record, Plan::Fetch(request))
}

fn lease_end(now_ms: u64, timeout_ms: u64) -> u64 {
    now_ms.saturating_add(timeout_ms).saturating_add(LEASE_GRACE_MS)
}

/// The next fetch for a key set: its JWKS, or first the discovery document that names it.
fn fetch_request(source: &RemoteJwks, provider: usize, record: &SharedRecord, reason: FetchReason) -> FetchRequest {
    let discovered = record.jwks_uri.as_deref().and_then(|uri| HttpTarget::parse(uri).map(|target| (uri, target)));
    match (source.discovery, discovered) {
        (true, Some((uri, target))) => FetchRequest {
            provider,
            kind: FetchKind::Jwks,
            reason,
            uri: uri.to_string(),
            cluster: target.cluster(source.cluster_override.as_deref()),
            authority: target.authority,
            path: target.path,
            timeout_ms: source.timeout_ms,
        },
        (discovery, _) => FetchRequest {
            provider,
            kind: if discovery { FetchKind::Discovery } else { FetchKind::Jwks },
            reason,
            uri: source.uri.clone(),
            cluster: source.cluster.clone(),
            authority: source.authority.clone(),
            path: source.path.clone(),
            timeout_ms: source.timeout_ms,
        },
    }
}

/// A fetch result, judged before it touches the record (parsing is the expensive part).
enum Judged {
    JwksUri(String),
    /// The usable keys as the record stores them (`KeySet::to_jwks_json`), and how many.
    Keys {
        jwks_json: String,
        count: usize,
        skipped: Vec<String>,
        refresh_ms: u64,
    },
    Failed(FetchError),
}

fn judge(
    source: &RemoteJwks,
    issuer: &str,
    fetch: &FetchRequest,
    result: FetchResult<'_>,
    max_jwks_bytes: usize,
) -> Judged {
    match result {
        FetchResult::NoResponse => {
            Judged::Failed(FetchError::NoResponse { uri: fetch.uri.clone(), cluster: fetch.cluster.clone() })
        }
        FetchResult::Response { status, .. } | FetchResult::TooLarge { status, .. } if status != 200 => {
            Judged::Failed(FetchError::HttpStatus { uri: fetch.uri.clone(), status })
        }
        FetchResult::TooLarge { size, .. } => Judged::Failed(match fetch.kind {
            FetchKind::Discovery => FetchError::Discovery(DiscoveryError::TooLarge(size)),
            FetchKind::Jwks => FetchError::Jwks(JwksError::TooLarge(size, max_jwks_bytes)),
        }),
        FetchResult::Response { body, cache_control, .. } => match fetch.kind {
            FetchKind::Discovery => match discovery::jwks_uri(body, issuer) {
                Ok(uri) => Judged::JwksUri(uri),
                Err(err) => Judged::Failed(FetchError::Discovery(err)),
            },
            FetchKind::Jwks => match jwks::parse_with_limit(body, max_jwks_bytes) {
                Ok(parsed) => Judged::Keys {
                    jwks_json: parsed.key_set.to_jwks_json(),
                    count: parsed.key_set.keys.len(),
                    skipped: parsed.skipped,
                    refresh_ms: refresh_interval_ms(source.cache_duration_ms, cache_control),
                },
                Err(err) => Judged::Failed(FetchError::Jwks(err)),
            },
        },
    }
}

fn complete_transition(
    source: &RemoteJwks,
    mut record: SharedRecord,
    worker: Worker,
    fetch: &FetchRequest,
    judged: &Judged,
    now_ms: u64,
    random: u64,
) -> (SharedRecord, FetchOutcome) {
    // Only the lease holder may record a result, even one whose lease ran out: until another
    // worker takes the lease over, nobody else is fetching.
    if record.lease.is_none_or(|lease| lease.owner != worker.id) {
        return (record, FetchOutcome { report: FetchReport::Superseded, next: None, wake: Vec::new() });
    }
    let report = match judged {
        Judged::JwksUri(uri) => {
            record.jwks_uri = Some(uri.clone());
            let next = fetch_request(source, fetch.provider, &record, fetch.reason);
            record.lease = Some(Lease { owner: worker.id, until_ms: lease_end(now_ms, next.timeout_ms) });
            let report = FetchReport::Discovered { jwks_uri: uri.clone() };
            return (record, FetchOutcome { report, next: Some(next), wake: Vec::new() });
        }
        Judged::Keys { jwks_json, count, skipped, refresh_ms } => {
            // A new version only when the keys changed: every worker re-parses the keys of a new
            // version, and the token cache forgets what the previous version verified.
            if record.keys.as_deref() != Some(jwks_json.as_str()) {
                record.keys = Some(jwks_json.clone());
                record.keys_version = record.keys_version.saturating_add(1);
            }
            record.keys_expire_ms = now_ms.saturating_add(*refresh_ms).saturating_add(source.stale_if_error_ms);
            let refresh_in_ms = refresh_ms.saturating_sub(refresh_jitter_ms(*refresh_ms, random));
            record.next_fetch_ms = now_ms.saturating_add(refresh_in_ms);
            record.failures = 0;
            FetchReport::Updated { keys: *count, skipped: skipped.clone(), refresh_in_ms }
        }
        Judged::Failed(error) => {
            record.failures = record.failures.saturating_add(1);
            let retry_in_ms = retry_delay_ms(source.cache_duration_ms, record.failures, random);
            record.next_fetch_ms = now_ms.saturating_add(retry_in_ms);
            if fetch.kind == FetchKind::Jwks {
                // The key set may have moved: ask discovery again on the next attempt.
                record.jwks_uri = None;
            }
            let kept_previous_keys = record.keys.is_some() && record.keys_expire_ms > now_ms;
            FetchReport::Failed { error: error.clone(), retry_in_ms, kept_previous_keys }
        }
    };
    record.lease = None;
    record.completions = record.completions.saturating_add(1);
    let wake =
        std::mem::take(&mut record.waiters).into_iter().filter(|token| Some(*token) != worker.wake_token).collect();
    (record, FetchOutcome { report, next: None, wake })
}

// ---------------------------------------------------------------------------------------------
// Each worker's view.

/// One worker's copy of a shared record, with the keys parsed.
#[derive(Debug, Default)]
struct View {
    keys: Option<KeySet>,
    keys_version: u64,
    keys_expire_ms: u64,
    failures: u32,
    lease_until_ms: Option<u64>,
    last_kid_refetch_ms: Option<u64>,
    completions: u64,
}

impl View {
    /// Takes in `record`; returns the number of keys when a new version was loaded.
    fn observe(&mut self, record: &SharedRecord) -> Option<usize> {
        let mut loaded = None;
        if record.keys_version != self.keys_version {
            self.keys_version = record.keys_version;
            // The record holds only keys that parsed when they were fetched, so this succeeds.
            self.keys = record.keys.as_deref().and_then(|text| jwks::parse(text.as_bytes()).ok()).map(|p| p.key_set);
            loaded = Some(self.keys.as_ref().map_or(0, |keys| keys.keys.len()));
        }
        self.keys_expire_ms = record.keys_expire_ms;
        self.failures = record.failures;
        self.lease_until_ms = record.lease.map(|lease| lease.until_ms);
        self.last_kid_refetch_ms = record.last_kid_refetch_ms;
        self.completions = record.completions;
        loaded
    }

    fn usable_keys(&self, now_ms: u64) -> Option<&KeySet> {
        self.keys.as_ref().filter(|_| now_ms < self.keys_expire_ms)
    }

    fn in_flight(&self, now_ms: u64) -> bool {
        self.lease_until_ms.is_some_and(|until| until > now_ms)
    }
}

#[derive(Debug)]
enum Entry {
    Inline(KeySet),
    Remote(Box<RemoteEntry>),
}

#[derive(Debug)]
struct RemoteEntry {
    source: RemoteJwks,
    issuer: String,
    shared_key: String,
    view: View,
}

/// Every provider's keys as this worker sees them, and the logic to keep them current.
#[derive(Debug)]
pub struct JwksCache {
    entries: Vec<Entry>,
    /// `limits.maxJwksBytes`: larger fetched documents are refused.
    max_jwks_bytes: usize,
}

impl JwksCache {
    /// Inline keys are ready at once; remote ones have none until the first `sync` or fetch.
    pub fn new(config: &Config) -> JwksCache {
        let entries = config
            .providers
            .iter()
            .map(|provider| match &provider.keys {
                KeySource::Inline(keys) => Entry::Inline(keys.clone()),
                KeySource::Remote(source) => Entry::Remote(Box::new(RemoteEntry {
                    source: source.clone(),
                    issuer: provider.issuer.clone(),
                    // Keyed by where the keys come from, not by position in this configuration:
                    // plugin configurations sharing a VM group and an issuer share its keys.
                    shared_key: format!("{SHARED_KEY_PREFIX}{} {}", source.cluster, source.uri),
                    view: View::default(),
                })),
            })
            .collect();
        JwksCache { entries, max_jwks_bytes: config.limits.max_jwks_bytes }
    }

    fn remote(&self, provider: usize) -> Option<&RemoteEntry> {
        match self.entries.get(provider) {
            Some(Entry::Remote(remote)) => Some(remote),
            _ => None,
        }
    }

    fn remote_mut(&mut self, provider: usize) -> Option<&mut RemoteEntry> {
        match self.entries.get_mut(provider) {
            Some(Entry::Remote(remote)) => Some(remote),
            _ => None,
        }
    }

    /// Providers whose keys are fetched.
    pub fn remote_providers(&self) -> Vec<usize> {
        (0..self.entries.len()).filter(|&provider| self.remote(provider).is_some()).collect()
    }

    /// Creates the shared records that do not exist yet. Envoy's shared data has no atomic
    /// "create if absent", so this runs when the plugin is configured, before any worker plans a
    /// fetch: Envoy configures a throwaway copy of the plugin on the main thread (its
    /// configuration canary) before any worker VM starts, so the records exist before workers race.
    pub fn ensure_shared(&self, store: &mut dyn SharedStore) {
        for entry in &self.entries {
            if let Entry::Remote(remote) = entry {
                if store.get(&remote.shared_key).is_none() {
                    let _ = store.set(&remote.shared_key, &SharedRecord::default().encode(), None);
                }
            }
        }
    }

    /// Brings this worker's view of `provider` up to date with the shared record. Returns the
    /// number of keys when a new key set was loaded (fetched by any worker).
    pub fn sync(&mut self, store: &dyn SharedStore, provider: usize) -> Option<usize> {
        let remote = self.remote_mut(provider)?;
        let record = store.get(&remote.shared_key).map(|(bytes, _)| SharedRecord::decode(&bytes))?;
        remote.view.observe(&record)
    }

    /// Decides what this worker does about `provider` now; `waiting` says whether it has requests
    /// parked on it. Takes the lease when a fetch is due (or an unknown-`kid` refetch is wanted
    /// and allowed), or puts this worker on the wake list of the fetch in flight.
    pub fn plan(
        &mut self,
        store: &mut dyn SharedStore,
        provider: usize,
        worker: Worker,
        waiting: bool,
        now_ms: u64,
    ) -> Plan {
        let Some(remote) = self.remote_mut(provider) else { return Plan::Idle };
        // Requests wait with keys in hand only for a `kid` those keys lack.
        let unknown_kid = waiting && remote.view.usable_keys(now_ms).is_some();
        let wants = Wants { waiting, unknown_kid };
        let source = &remote.source;
        match update(store, &remote.shared_key, |record| {
            plan_transition(source, provider, record, worker, wants, now_ms)
        }) {
            Some((record, plan)) => {
                remote.view.observe(&record);
                plan
            }
            // Lost every race: the others are busy with this record; try again on the next tick.
            None => Plan::Idle,
        }
    }

    /// Records the result of `fetch` (dispatched by this worker under its lease) in the shared
    /// record. `random` jitters the next refresh or retry.
    pub fn on_fetch_result(
        &mut self,
        store: &mut dyn SharedStore,
        worker: Worker,
        fetch: &FetchRequest,
        result: FetchResult<'_>,
        now_ms: u64,
        random: u64,
    ) -> FetchOutcome {
        let max_jwks_bytes = self.max_jwks_bytes;
        let Some(remote) = self.remote_mut(fetch.provider) else {
            return FetchOutcome { report: FetchReport::Superseded, next: None, wake: Vec::new() };
        };
        let judged = judge(&remote.source, &remote.issuer, fetch, result, max_jwks_bytes);
        let source = &remote.source;
        let updated = update(store, &remote.shared_key, |record| {
            complete_transition(source, record, worker, fetch, &judged, now_ms, random)
        });
        match updated {
            Some((record, outcome)) => {
                remote.view.observe(&record);
                outcome
            }
            // The lease keeps others off this record, so losing every race means it is in
            // trouble; the lease runs out and the next worker starts over.
            None => FetchOutcome { report: FetchReport::Superseded, next: None, wake: Vec::new() },
        }
    }

    /// Counts finished fetches of `provider` (any worker's): requests parked at one count are
    /// settled once it moves.
    pub fn completions(&self, provider: usize) -> u64 {
        self.remote(provider).map_or(0, |remote| remote.view.completions)
    }

    /// Keys of `provider` usable now (for the keys-in-use gauge).
    pub fn keys_in_use(&self, provider: usize, now_ms: u64) -> usize {
        match self.entries.get(provider) {
            Some(Entry::Inline(keys)) => keys.keys.len(),
            Some(Entry::Remote(remote)) => remote.view.usable_keys(now_ms).map_or(0, |keys| keys.keys.len()),
            None => 0,
        }
    }

    /// The keys as requests see them at `now_ms` (milliseconds since the Unix epoch).
    pub fn at(&self, now_ms: u64) -> KeysAt<'_> {
        KeysAt { cache: self, now_ms, may_wait: true }
    }

    /// Keys for a token of `provider` naming `kid`. With `may_wait`, a request may be told to
    /// wait (`Pending`) for the first fetch, or for a refetch when `kid` is unknown; without it,
    /// it gets what is there now.
    pub fn state(&self, provider: usize, kid: Option<&str>, now_ms: u64, may_wait: bool) -> KeyState<'_> {
        let remote = match self.entries.get(provider) {
            Some(Entry::Inline(keys)) => return KeyState::Ready(keys),
            Some(Entry::Remote(remote)) => remote,
            None => return KeyState::Unavailable,
        };
        let view = &remote.view;
        match view.usable_keys(now_ms) {
            Some(keys) => {
                let unknown_kid = kid.is_some_and(|kid| !keys.has_kid(kid));
                let refetch_allowed = view
                    .last_kid_refetch_ms
                    .is_none_or(|last| now_ms >= last.saturating_add(remote.source.unknown_kid_refetch_interval_ms));
                if unknown_kid && may_wait && (view.in_flight(now_ms) || refetch_allowed) {
                    KeyState::Pending
                } else {
                    KeyState::Ready(keys)
                }
            }
            // No keys: wait for the first fetch, but once a fetch has failed, fail fast instead
            // of holding every request for a provider that is down.
            None if may_wait && view.failures == 0 => KeyState::Pending,
            None => KeyState::Unavailable,
        }
    }
}

/// The cache at one instant, as requests see it: `JwksCache::at(now_ms)`.
#[derive(Clone, Copy)]
pub struct KeysAt<'a> {
    cache: &'a JwksCache,
    now_ms: u64,
    may_wait: bool,
}

impl<'a> KeysAt<'a> {
    /// For requests that may not wait any longer: they get the keys there are.
    pub fn without_waiting(self) -> KeysAt<'a> {
        KeysAt { may_wait: false, ..self }
    }
}

impl KeyStore for KeysAt<'_> {
    fn key_state(&self, provider: usize, kid: Option<&str>) -> KeyState<'_> {
        self.cache.state(provider, kid, self.now_ms, self.may_wait)
    }

    fn keys_version(&self, provider: usize) -> Option<u64> {
        match self.cache.entries.get(provider)? {
            Entry::Inline(_) => Some(0),
            Entry::Remote(remote) => remote.view.usable_keys(self.now_ms).map(|_| remote.view.keys_version),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys;
    use serde_json::json;
    use std::collections::HashMap;

    const REFRESH: u64 = 5 * 60 * 1000;
    const STALE: u64 = 60 * 60 * 1000;
    const KID_INTERVAL: u64 = 30_000;
    const ME: Worker = Worker { id: 1, wake_token: Some(11) };
    const OTHER: Worker = Worker { id: 2, wake_token: Some(22) };
    const ISSUER: &str = "https://idp.example/realms/shop";

    /// Envoy's shared data: a global counter for CAS tokens; a write to a missing key ignores the token.
    #[derive(Default)]
    struct MemoryStore {
        values: HashMap<String, (Vec<u8>, u32)>,
        next_cas: u32,
        writes: usize,
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

    fn config_with(rule: serde_json::Value) -> Config {
        let inline = json!({"keys": [testkeys::jwk(testkeys::key(0), "a")]}).to_string();
        Config::parse(json!({"jwtRules": [rule, {"issuer": "inline", "jwks": inline}]}).to_string().as_bytes())
            .expect("valid")
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
        match cache.state(0, kid, now, true) {
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
        let (bytes, _) = store.values.values().next().expect("one record");
        SharedRecord::decode(bytes)
    }

    /// A cache that fetched kid "a" at `now` (random 0: refresh exactly at REFRESH).
    fn ready(store: &mut MemoryStore, worker: Worker, now: u64) -> JwksCache {
        let mut cache = JwksCache::new(&config());
        cache.ensure_shared(store);
        let request = fetch(cache.plan(store, 0, worker, false, now));
        let outcome = cache.on_fetch_result(store, worker, &request, ok(&jwks(&[("a", 0)])), now, 0);
        assert!(matches!(outcome.report, FetchReport::Updated { keys: 1, .. }), "{outcome:?}");
        cache
    }

    #[test]
    fn the_first_fetch_is_due_at_once_and_held_by_one_worker() {
        let mut store = MemoryStore::default();
        let mut mine = JwksCache::new(&config());
        let mut theirs = JwksCache::new(&config());
        mine.ensure_shared(&mut store);
        theirs.ensure_shared(&mut store);
        assert_eq!(store.writes, 1, "the record is created once");
        assert_eq!(mine.remote_providers(), vec![0]);
        assert_eq!(mine.state(1, Some("a"), 0, true).ready_count(), Some(1), "inline keys need no fetch");
        // Before any fetch, requests wait for the first one.
        assert_eq!(state(&mine, Some("a"), 1_000), "pending");

        let request = fetch(mine.plan(&mut store, 0, ME, false, 1_000));
        assert_eq!(
            request,
            FetchRequest {
                provider: 0,
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
        assert_eq!(theirs.plan(&mut store, 0, OTHER, false, 1_001), Plan::Idle);
        assert_eq!(mine.plan(&mut store, 0, ME, false, 1_001), Plan::Idle);
        // ...and when it has requests waiting, it joins the wake list (once).
        assert_eq!(theirs.plan(&mut store, 0, OTHER, true, 1_002), Plan::Wait);
        assert_eq!(theirs.plan(&mut store, 0, OTHER, true, 1_003), Plan::Wait);
        assert_eq!(record(&store).waiters, vec![22]);
        assert_eq!(state(&theirs, Some("a"), 1_003), "pending");

        let outcome = mine.on_fetch_result(&mut store, ME, &request, ok(&jwks(&[("a", 0)])), 2_000, 0);
        assert_eq!(outcome.report, FetchReport::Updated { keys: 1, skipped: vec![], refresh_in_ms: REFRESH });
        assert_eq!(outcome.wake, vec![22], "the waiting worker is woken");
        assert_eq!(outcome.next, None);
        assert_eq!(state(&mine, Some("a"), 2_000), "ready");
        // The other worker gets the keys from the shared record, without fetching.
        assert_eq!(theirs.completions(0), 0);
        assert_eq!(theirs.sync(&store, 0), Some(1));
        assert_eq!(theirs.completions(0), 1);
        assert_eq!(state(&theirs, Some("a"), 2_000), "ready");
        assert_eq!(theirs.keys_in_use(0, 2_000), 1);
        assert_eq!(theirs.sync(&store, 0), None, "no new version");
        let shared = record(&store);
        assert_eq!((shared.keys_version, shared.lease, shared.waiters.len()), (1, None, 0));
    }

    #[test]
    fn keys_refresh_in_the_background_and_requests_never_wait_for_it() {
        let mut store = MemoryStore::default();
        let mut cache = ready(&mut store, ME, 0);
        assert_eq!(cache.plan(&mut store, 0, ME, false, REFRESH - 1), Plan::Idle);
        let request = fetch(cache.plan(&mut store, 0, ME, false, REFRESH));
        assert_eq!(request.reason, FetchReason::Refresh);
        assert_eq!(state(&cache, Some("a"), REFRESH), "ready", "old keys serve while the refresh runs");
        let outcome = cache.on_fetch_result(&mut store, ME, &request, ok(&jwks(&[("b", 1)])), REFRESH + 10, 0);
        assert!(matches!(outcome.report, FetchReport::Updated { keys: 1, .. }));
        assert_eq!(cache.keys_in_use(0, REFRESH + 10), 1);
        assert_eq!(state(&cache, Some("b"), REFRESH + 10), "ready");
        assert_eq!(record(&store).keys_version, 2);
        assert_eq!(cache.at(REFRESH + 10).keys_version(0), Some(2));
        // The same keys again: a refresh, not a new version (cached verifications stay valid).
        let request = fetch(cache.plan(&mut store, 0, ME, false, 2 * REFRESH + 10));
        let outcome = cache.on_fetch_result(&mut store, ME, &request, ok(&jwks(&[("b", 1)])), 2 * REFRESH + 20, 0);
        assert!(matches!(outcome.report, FetchReport::Updated { keys: 1, .. }));
        assert_eq!(record(&store).keys_version, 2);
        assert_eq!(cache.at(2 * REFRESH + 20).keys_version(0), Some(2));
        assert_eq!(cache.at(2 * REFRESH + 20 + REFRESH + STALE).keys_version(0), None, "expired keys have no version");
    }

    #[test]
    fn refresh_is_jittered_by_up_to_a_tenth() {
        let mut store = MemoryStore::default();
        let mut cache = JwksCache::new(&config());
        let request = fetch(cache.plan(&mut store, 0, ME, false, 0));
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
        let mut cache = JwksCache::new(&config());
        let request = fetch(cache.plan(&mut store, 0, ME, false, 0));
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
            let request = fetch(cache.plan(&mut store, 0, ME, false, now));
            assert_eq!(request.reason, if failure == 1 { FetchReason::Refresh } else { FetchReason::Retry });
            let outcome = cache.on_fetch_result(&mut store, ME, &request, FetchResult::NoResponse, now, u64::MAX);
            let FetchReport::Failed { error, retry_in_ms, kept_previous_keys: true } = outcome.report else {
                panic!("{outcome:?}")
            };
            assert_eq!(error.code(), "jwks_fetch_no_response");
            assert!(retry_in_ms >= ceiling / 2 && retry_in_ms <= ceiling, "{failure}: {retry_in_ms}");
            assert_eq!(state(&cache, Some("a"), now), "ready", "stale keys still serve");
            assert_eq!(cache.plan(&mut store, 0, ME, false, now + retry_in_ms - 1), Plan::Idle);
            now += retry_in_ms;
        }
        assert_eq!(record(&store).failures, 7);
        // Success resets the backoff.
        let request = fetch(cache.plan(&mut store, 0, ME, false, now));
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
            if let Plan::Fetch(request) = cache.plan(&mut store, 0, ME, false, now) {
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
        assert_eq!(cache.keys_in_use(0, now), 0);
        // Recovery: the next retry brings keys back.
        let request = loop {
            if let Plan::Fetch(request) = cache.plan(&mut store, 0, ME, false, now) {
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
        let mut cache = JwksCache::new(&config());
        let request = fetch(cache.plan(&mut store, 0, ME, true, 0));
        assert_eq!(state(&cache, Some("a"), 0), "pending", "the first fetch is worth waiting for");
        let outcome = cache.on_fetch_result(&mut store, ME, &request, ok("<html>"), 10, 0);
        let FetchReport::Failed { error, kept_previous_keys: false, retry_in_ms } = outcome.report else { panic!() };
        assert_eq!(error.code(), "jwks_not_json");
        assert_eq!(state(&cache, Some("a"), 10), "unavailable");
        assert_eq!(state(&cache, None, 10), "unavailable");
        // A retry in flight is not waited for either.
        let retry = fetch(cache.plan(&mut store, 0, ME, false, 10 + retry_in_ms));
        assert_eq!(retry.reason, FetchReason::Retry);
        assert_eq!(state(&cache, Some("a"), 10 + retry_in_ms), "unavailable");
        cache.on_fetch_result(&mut store, ME, &retry, ok(&jwks(&[("a", 0)])), 20 + retry_in_ms, 0);
        assert_eq!(state(&cache, Some("a"), 20 + retry_in_ms), "ready");
    }

    #[test]
    fn an_unknown_kid_triggers_one_refetch_per_interval() {
        let mut store = MemoryStore::default();
        let mut cache = ready(&mut store, ME, 0);
        let mut theirs = JwksCache::new(&config());
        theirs.sync(&store, 0);
        let now = 1_000;
        assert_eq!(state(&cache, Some("a"), now), "ready");
        assert_eq!(state(&cache, None, now), "ready", "no kid: every key is tried, no refetch");
        assert_eq!(state(&cache, Some("b"), now), "pending");
        assert!(
            matches!(cache.state(0, Some("b"), now, false), KeyState::Ready(_)),
            "without waiting, the keys there are"
        );

        let request = fetch(cache.plan(&mut store, 0, ME, true, now));
        assert_eq!(request.reason, FetchReason::UnknownKid);
        // While it runs, another worker's unknown kids wait for it.
        theirs.sync(&store, 0);
        assert_eq!(state(&theirs, Some("zzz"), now + 1), "pending");
        assert_eq!(theirs.plan(&mut store, 0, OTHER, true, now + 1), Plan::Wait);
        let outcome = cache.on_fetch_result(&mut store, ME, &request, ok(&jwks(&[("b", 1)])), now + 5, 0);
        assert_eq!(outcome.wake, vec![22]);
        assert_eq!(state(&cache, Some("b"), now + 5), "ready", "the rotated key is in");
        assert!(matches!(cache.state(0, Some("a"), now + 5, true), KeyState::Ready(keys) if !keys.has_kid("a")));

        // Within the interval, unknown kids are rejected without a fetch, in every worker.
        theirs.sync(&store, 0);
        for (cache, worker) in [(&mut cache, ME), (&mut theirs, OTHER)] {
            assert_eq!(state(cache, Some("zzz"), now + KID_INTERVAL - 1), "ready");
            assert_eq!(cache.plan(&mut store, 0, worker, true, now + KID_INTERVAL - 1), Plan::Settle);
        }
        assert_eq!(state(&cache, Some("zzz"), now + KID_INTERVAL), "pending");
        let again = fetch(theirs.plan(&mut store, 0, OTHER, true, now + KID_INTERVAL));
        assert_eq!(again.reason, FetchReason::UnknownKid);
        assert_eq!(record(&store).last_kid_refetch_ms, Some(now + KID_INTERVAL));
        // The scheduled refresh is not moved by unknown-kid refetches.
        assert_eq!(record(&store).next_fetch_ms, now + 5 + REFRESH);
    }

    #[test]
    fn the_wake_list_is_bounded_and_workers_without_a_queue_wait_on_ticks() {
        let mut store = MemoryStore::default();
        let mut cache = JwksCache::new(&config());
        fetch(cache.plan(&mut store, 0, ME, false, 0));
        for token in 0..(MAX_WAITERS as u32 + 10) {
            let worker = Worker { id: 100 + u64::from(token), wake_token: Some(1_000 + token) };
            assert_eq!(cache.plan(&mut store, 0, worker, true, 1), Plan::Wait);
        }
        let queueless = Worker { id: 5, wake_token: None };
        assert_eq!(cache.plan(&mut store, 0, queueless, true, 1), Plan::Wait);
        assert_eq!(record(&store).waiters.len(), MAX_WAITERS);
    }

    #[test]
    fn a_due_fetch_is_not_counted_as_an_unknown_kid_refetch() {
        let mut store = MemoryStore::default();
        let mut cache = ready(&mut store, ME, 0);
        let request = fetch(cache.plan(&mut store, 0, ME, true, REFRESH));
        assert_eq!(request.reason, FetchReason::Refresh);
        assert_eq!(record(&store).last_kid_refetch_ms, None);
    }

    #[test]
    fn a_dead_lease_holder_is_taken_over_and_its_late_result_dropped() {
        let mut store = MemoryStore::default();
        let mut mine = JwksCache::new(&config());
        let mut theirs = JwksCache::new(&config());
        let request = fetch(mine.plan(&mut store, 0, ME, false, 0));
        assert_eq!(theirs.plan(&mut store, 0, OTHER, true, 0), Plan::Wait);
        let lease_end = 2_000 + LEASE_GRACE_MS;
        assert_eq!(theirs.plan(&mut store, 0, OTHER, true, lease_end - 1), Plan::Wait);
        let takeover = fetch(theirs.plan(&mut store, 0, OTHER, true, lease_end));
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
        let mut cache = JwksCache::new(&config());
        let request = fetch(cache.plan(&mut store, 0, ME, false, 0));
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
        let mut cache = JwksCache::new(&config());
        cache.ensure_shared(&mut store);
        let request = fetch(cache.plan(&mut store, 0, ME, false, 0));
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
        let mut cache = JwksCache::new(&discovery_config());
        let discovery = fetch(cache.plan(&mut store, 0, ME, false, 0));
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
        let refresh = fetch(cache.plan(&mut store, 0, ME, false, 200 + REFRESH));
        assert_eq!((refresh.kind, refresh.uri.as_str()), (FetchKind::Jwks, "https://keys.example:9443/shop/certs"));
        // A failed key fetch sends the next attempt back to discovery.
        cache.on_fetch_result(&mut store, ME, &refresh, FetchResult::NoResponse, 300 + REFRESH, 0);
        let retry = fetch(cache.plan(&mut store, 0, ME, false, 300 + REFRESH + RETRY_BASE_MS));
        assert_eq!(retry.kind, FetchKind::Discovery);
        assert_eq!(state(&cache, Some("a"), 300 + REFRESH), "ready", "keys kept meanwhile");
    }

    #[test]
    fn discovered_uri_without_jwks_cluster_uses_the_outbound_cluster_of_its_host() {
        let mut store = MemoryStore::default();
        let mut cache = JwksCache::new(&config_with(json!({"issuer": ISSUER})));
        let discovery = fetch(cache.plan(&mut store, 0, ME, false, 0));
        assert_eq!(discovery.cluster, "outbound|443||idp.example");
        let document = json!({"issuer": ISSUER, "jwks_uri": "http://keys.example/certs"}).to_string();
        let keys = cache.on_fetch_result(&mut store, ME, &discovery, ok(&document), 1, 0).next.expect("next");
        assert_eq!(keys.cluster, "outbound|80||keys.example");
    }

    #[test]
    fn a_bad_discovery_document_is_a_failed_fetch() {
        let mut store = MemoryStore::default();
        let mut cache = JwksCache::new(&discovery_config());
        let discovery = fetch(cache.plan(&mut store, 0, ME, true, 0));
        let huge = FetchResult::TooLarge { status: 200, size: 1 << 30 };
        let outcome = cache.on_fetch_result(&mut store, ME, &discovery, huge, 1, 0);
        let FetchReport::Failed { error, .. } = &outcome.report else { panic!() };
        assert_eq!(error.code(), "discovery_too_large");
        let big_error_page = FetchResult::TooLarge { status: 502, size: 1 << 30 };
        let discovery = fetch(cache.plan(&mut store, 0, ME, true, 10_000));
        let outcome = cache.on_fetch_result(&mut store, ME, &discovery, big_error_page, 10_001, 0);
        let FetchReport::Failed { error, .. } = &outcome.report else { panic!() };
        assert_eq!(error.code(), "jwks_fetch_http_status");
        let discovery = fetch(cache.plan(&mut store, 0, ME, true, 20_000));
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
            let mut cache = JwksCache::new(&config());
            let request = fetch(cache.plan(&mut store, 0, ME, false, 0));
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
        let cache = JwksCache::new(&config());
        cache.ensure_shared(&mut store);
        let key = store.values.keys().next().expect("key").clone();
        assert!(
            key.starts_with(SHARED_KEY_PREFIX)
                && key.ends_with("outbound|8443||idp.example https://idp.example:8443/certs")
        );
        store.set(&key, b"garbage", None).expect("set");
        let mut cache = cache;
        assert_eq!(cache.sync(&store, 0), None);
        assert!(matches!(cache.plan(&mut store, 0, ME, false, 0), Plan::Fetch(_)));
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
}
