//! The host's shared data as the cache sees it, and the versioned record each key set keeps there.

use super::MAX_CAS_ATTEMPTS;
use serde::{Deserialize, Serialize};

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
pub(super) struct SharedRecord {
    /// Bumped on every successful fetch; 0 until the first.
    pub(super) keys_version: u64,
    /// The usable keys as a minimal JWKS document (`KeySet::to_jwks_json`).
    pub(super) keys: Option<String>,
    /// Keys are not used after this (refresh interval + `staleIfError` after their fetch).
    pub(super) keys_expire_ms: u64,
    /// When the next refresh or retry is due.
    pub(super) next_fetch_ms: u64,
    /// Consecutive failed fetches.
    pub(super) failures: u32,
    pub(super) lease: Option<Lease>,
    /// When a refetch for an unknown `kid` last started (the rate limit).
    pub(super) last_kid_refetch_ms: Option<u64>,
    /// Wake tokens of workers that parked requests on the fetch in flight.
    pub(super) waiters: Vec<u32>,
    /// From OIDC discovery; cleared after a failed key fetch so the next attempt rediscovers.
    pub(super) jwks_uri: Option<String>,
    /// Bumped on every finished fetch, good or bad: parked requests are settled when it moves.
    pub(super) completions: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lease {
    pub(super) owner: u64,
    pub(super) until_ms: u64,
}

impl SharedRecord {
    /// An unreadable record (none of ours) reads as a fresh one; the next write replaces it.
    pub(super) fn decode(bytes: &[u8]) -> SharedRecord {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(super) fn lease_active(&self, now_ms: u64) -> bool {
        self.lease.is_some_and(|lease| lease.until_ms > now_ms)
    }
}

/// Reads `key`, applies `transition`, and writes the result back by compare-and-swap, retrying
/// when another worker wrote in between. Returns the record as written (or as read, when the
/// transition changed nothing) and the transition's output; `None` after too many lost races.
pub(super) fn update<T>(
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
