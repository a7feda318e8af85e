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

mod fetch;
mod shared;
mod transitions;

pub use fetch::{
    refresh_interval_ms, retry_delay_ms, FetchError, FetchKind, FetchOutcome, FetchReason, FetchReport, FetchRequest,
    FetchResult, Plan,
};

pub use shared::{CasMismatch, SharedStore, Worker};

use crate::ids::ProviderId;
use crate::keys::jwks::{self, KeySet};
use crate::keys::{KeySource, KeyState, KeyStore, RemoteJwks};
use shared::{update, SharedRecord};
use transitions::{complete_transition, judge, plan_transition, Wants};

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
    #[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
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
    /// One entry per provider, in `ProviderId` order: `(issuer, where its keys come from)`.
    /// Inline keys are ready at once; remote ones have none until the first `sync` or fetch.
    /// `max_jwks_bytes` is `limits.maxJwksBytes`.
    pub fn new<'a>(sources: impl IntoIterator<Item = (&'a str, &'a KeySource)>, max_jwks_bytes: usize) -> JwksCache {
        let entries = sources
            .into_iter()
            .map(|(issuer, keys)| match keys {
                KeySource::Inline(keys) => Entry::Inline(keys.clone()),
                KeySource::Remote(source) => Entry::Remote(Box::new(RemoteEntry {
                    source: source.clone(),
                    issuer: issuer.to_string(),
                    // Keyed by where the keys come from, not by position in this configuration:
                    // plugin configurations sharing a VM group and an issuer share its keys.
                    shared_key: format!("{SHARED_KEY_PREFIX}{} {}", source.cluster, source.uri),
                    view: View::default(),
                })),
            })
            .collect();
        JwksCache { entries, max_jwks_bytes }
    }

    fn remote(&self, provider: ProviderId) -> Option<&RemoteEntry> {
        match self.entries.get(provider.index()) {
            Some(Entry::Remote(remote)) => Some(remote),
            _ => None,
        }
    }

    fn remote_mut(&mut self, provider: ProviderId) -> Option<&mut RemoteEntry> {
        match self.entries.get_mut(provider.index()) {
            Some(Entry::Remote(remote)) => Some(remote),
            _ => None,
        }
    }

    /// Providers whose keys are fetched.
    pub fn remote_providers(&self) -> Vec<ProviderId> {
        (0..self.entries.len()).map(ProviderId).filter(|&provider| self.remote(provider).is_some()).collect()
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
    pub fn sync(&mut self, store: &dyn SharedStore, provider: ProviderId) -> Option<usize> {
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
        provider: ProviderId,
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
    #[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
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
    pub fn completions(&self, provider: ProviderId) -> u64 {
        self.remote(provider).map_or(0, |remote| remote.view.completions)
    }

    /// Keys of `provider` usable now (for the keys-in-use gauge).
    pub fn keys_in_use(&self, provider: ProviderId, now_ms: u64) -> usize {
        match self.entries.get(provider.index()) {
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
    pub fn state(&self, provider: ProviderId, kid: Option<&str>, now_ms: u64, may_wait: bool) -> KeyState<'_> {
        let remote = match self.entries.get(provider.index()) {
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
    fn key_state(&self, provider: ProviderId, kid: Option<&str>) -> KeyState<'_> {
        self.cache.state(provider, kid, self.now_ms, self.may_wait)
    }

    fn keys_version(&self, provider: ProviderId) -> Option<u64> {
        match self.cache.entries.get(provider.index())? {
            Entry::Inline(_) => Some(0),
            Entry::Remote(remote) => remote.view.usable_keys(self.now_ms).map(|_| remote.view.keys_version),
        }
    }
}

#[cfg(test)]
mod tests;
