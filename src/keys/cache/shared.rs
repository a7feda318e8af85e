//! The host's shared data as the cache sees it, and the versioned record each key set keeps there.

use super::MAX_CAS_ATTEMPTS;
use crate::json::{self, Map, Value};

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lease {
    pub(super) owner: u64,
    pub(super) until_ms: u64,
}

impl SharedRecord {
    /// An unreadable record (none of ours) reads as a fresh one; the next write replaces it. A
    /// JSON object with the fields' names; an absent field has its default, an unknown one is
    /// ignored (so records stay readable across versions of the filter sharing one VM id).
    pub(super) fn decode(bytes: &[u8]) -> SharedRecord {
        json::parse(bytes, json::Limits::DOCUMENT).ok().and_then(|value| Self::read(&value)).unwrap_or_default()
    }

    fn read(value: &Value) -> Option<SharedRecord> {
        let record = value.as_object()?;
        let lease = match record.get("lease") {
            None | Some(Value::Null) => None,
            Some(lease) => {
                Some(Lease { owner: lease.get("owner")?.as_u64()?, until_ms: lease.get("until_ms")?.as_u64()? })
            }
        };
        let waiters = match record.get("waiters") {
            None => Vec::new(),
            Some(list) => list
                .as_array()?
                .iter()
                .map(|token| token.as_u64().and_then(|t| u32::try_from(t).ok()))
                .collect::<Option<_>>()?,
        };
        Some(SharedRecord {
            keys_version: number(record, "keys_version")?.unwrap_or_default(),
            keys: text(record, "keys")?,
            keys_expire_ms: number(record, "keys_expire_ms")?.unwrap_or_default(),
            next_fetch_ms: number(record, "next_fetch_ms")?.unwrap_or_default(),
            failures: u32::try_from(number(record, "failures")?.unwrap_or_default()).ok()?,
            lease,
            last_kid_refetch_ms: number(record, "last_kid_refetch_ms")?,
            waiters,
            jwks_uri: text(record, "jwks_uri")?,
            completions: number(record, "completions")?.unwrap_or_default(),
        })
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut record = Map::new();
        let mut put = |name: &str, value: Value| record.insert(name.into(), value);
        put("keys_version", self.keys_version.into());
        put("keys", self.keys.clone().map_or(Value::Null, Value::String));
        put("keys_expire_ms", self.keys_expire_ms.into());
        put("next_fetch_ms", self.next_fetch_ms.into());
        put("failures", u64::from(self.failures).into());
        put(
            "lease",
            self.lease.map_or(Value::Null, |lease| {
                let mut fields = Map::new();
                fields.insert("owner".into(), lease.owner.into());
                fields.insert("until_ms".into(), lease.until_ms.into());
                Value::Object(fields)
            }),
        );
        put("last_kid_refetch_ms", self.last_kid_refetch_ms.map_or(Value::Null, Value::from));
        put("waiters", Value::Array(self.waiters.iter().map(|&token| u64::from(token).into()).collect()));
        put("jwks_uri", self.jwks_uri.clone().map_or(Value::Null, Value::String));
        put("completions", self.completions.into());
        Value::Object(record).to_string().into_bytes()
    }

    pub(super) fn lease_active(&self, now_ms: u64) -> bool {
        self.lease.is_some_and(|lease| lease.until_ms > now_ms)
    }
}

/// An optional integer field: `Some(None)` when absent or null, `None` when it is something else.
fn number(record: &Map, name: &str) -> Option<Option<u64>> {
    match record.get(name) {
        None | Some(Value::Null) => Some(None),
        Some(value) => value.as_u64().map(Some),
    }
}

/// An optional string field, as `number`.
fn text(record: &Map, name: &str) -> Option<Option<String>> {
    match record.get(name) {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(text)) => Some(Some(text.clone())),
        Some(_) => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_unreadable_ones_read_as_fresh() {
        let record = SharedRecord {
            keys_version: 7,
            keys: Some(r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"\"quoted\""}]}"#.into()),
            keys_expire_ms: 1_700_000_000_000,
            next_fetch_ms: u64::MAX,
            failures: 3,
            lease: Some(Lease { owner: u64::MAX - 1, until_ms: 5 }),
            last_kid_refetch_ms: Some(0),
            waiters: vec![1, u32::MAX],
            jwks_uri: Some("https://idp.example/certs".into()),
            completions: 9,
        };
        assert_eq!(SharedRecord::decode(&record.encode()), record);
        assert_eq!(SharedRecord::decode(&SharedRecord::default().encode()), SharedRecord::default());
        // Absent fields have their defaults; unknown ones are ignored.
        let partial = SharedRecord::decode(br#"{"keys_version": 2, "future_field": [1]}"#);
        assert_eq!(partial, SharedRecord { keys_version: 2, ..SharedRecord::default() });
        for unreadable in [
            &b"not json"[..],
            b"[]",
            br#"{"failures": 4294967296}"#,
            br#"{"waiters": ["a"]}"#,
            br#"{"lease": {"owner": 1}}"#,
            br#"{"keys": 5}"#,
            br#"{"keys_version": -1}"#,
        ] {
            assert_eq!(SharedRecord::decode(unreadable), SharedRecord::default(), "{unreadable:?}");
        }
    }
}
