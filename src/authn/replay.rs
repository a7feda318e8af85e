//! The DPoP replay store: every accepted proof's `jti` is recorded in the host's shared data until
//! its window closes, so a proof is accepted once, whichever worker VM sees it (RFC 9449 §11.1).
//!
//! Bounded: `capacity` proofs in `capacity / SLOTS_PER_BUCKET` buckets, one shared-data value
//! each, a proof's bucket picked by its replay key (a hash, so clients cannot aim at one). A
//! bucket holds `SLOTS_PER_BUCKET` entries of `ENTRY_BYTES` (the 16-byte key and its expiry);
//! expired entries are dropped on every write. A bucket full of proofs still in their window
//! refuses the new one (fail closed: accepting it unrecorded would let it be replayed), which at
//! the default capacity takes more than 500 DPoP requests a second through one sidecar. Memory:
//! at most `capacity × ENTRY_BYTES` of shared data (1.5 MiB at the default), plus Envoy's
//! per-key overhead for each bucket used.
//!
//! Each record is a compare-and-swap: a read, and a write that fails if another worker wrote the
//! bucket in between (then read again). A write to a key that does not exist yet always succeeds
//! in Envoy, so two workers creating one bucket at once could lose an entry: the buckets are
//! created at configure (`ensure_buckets`), before any worker serves a request, and never empty
//! (a version byte leads every value), so no later write is unconditional.
//!
//! Time is the proof's check time (`ProofUse::checked_at_seconds`), not the record's: an entry is
//! dropped only once its proof would be stale to a check at that second, so a replay checked just
//! before its window closes still finds the entry it replays.
//!
//! Two limits, documented: the bucket of a proof is an unkeyed hash (workers share no secret they
//! could agree on without a compare-and-swap create), so a client with a key-bound token can grind
//! `jti`s to fill one bucket (1/1024th of proofs at the default capacity then get 503); and a
//! reload with another capacity maps proofs to other buckets, so a proof of the last two minutes
//! could be replayed once across it.

use super::dpop::{DpopError, ProofUse};
use crate::keys::cache::SharedStore;

/// Entries per bucket: one bucket's value is read and written whole for each proof (1.5 KB).
pub const SLOTS_PER_BUCKET: usize = 64;
/// The replay key and the Unix second the entry expires, little-endian.
pub const ENTRY_BYTES: usize = 24;
/// Proofs remembered by default (`limits.dpopReplayCapacity`).
pub const DEFAULT_CAPACITY: usize = 65_536;
/// Shared-data keys of the buckets: `<prefix><bucket>`.
const KEY_PREFIX: &str = "jwt-authz/v1/dpop-jti ";
/// Compare-and-swap rounds before the record is given up (and the proof refused).
const MAX_ATTEMPTS: usize = 16;
/// The first byte of every bucket's value: the format, and never an empty value.
const VERSION: u8 = 1;

/// Where and how many proofs are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStore {
    buckets: usize,
}

impl Default for ReplayStore {
    fn default() -> Self {
        ReplayStore::with_capacity(DEFAULT_CAPACITY)
    }
}

impl ReplayStore {
    /// Room for at least `capacity` proofs (rounded up to whole buckets).
    pub fn with_capacity(capacity: usize) -> ReplayStore {
        ReplayStore { buckets: capacity.div_ceil(SLOTS_PER_BUCKET).max(1) }
    }

    pub fn capacity(&self) -> usize {
        self.buckets * SLOTS_PER_BUCKET
    }

    /// Creates the buckets that do not exist yet, empty (each VM at configure; one read per bucket
    /// once they exist).
    pub fn ensure_buckets(&self, store: &mut dyn SharedStore) {
        for bucket in 0..self.buckets {
            let key = format!("{KEY_PREFIX}{bucket}");
            if store.get(&key).is_none() {
                let _ = store.set(&key, &[VERSION], None);
            }
        }
    }

    /// Records `proof` as of its check: `Replayed` if its key is recorded and not expired,
    /// `ReplayStoreFull` if its bucket has no room (or stays contended).
    pub fn record(&self, store: &mut dyn SharedStore, proof: &ProofUse) -> Result<(), DpopError> {
        let now_seconds = proof.checked_at_seconds;
        if proof.until_seconds < now_seconds {
            return Err(DpopError::Stale);
        }
        let [a, b, c, d, ..] = proof.replay_key;
        let bucket = u32::from_le_bytes([a, b, c, d]) as usize % self.buckets;
        let key = format!("{KEY_PREFIX}{bucket}");
        for _ in 0..MAX_ATTEMPTS {
            let (current, cas) = match store.get(&key) {
                Some((value, cas)) => (value, Some(cas)),
                None => (Vec::new(), None),
            };
            let mut next = Vec::with_capacity(current.len() + ENTRY_BYTES);
            next.push(VERSION);
            // Another format (none of ours) reads as empty; the write replaces it.
            let entries = match current.split_first() {
                Some((&VERSION, entries)) => entries,
                _ => &[],
            };
            for entry in entries.chunks_exact(ENTRY_BYTES) {
                let (replay_key, until) = entry.split_at(16);
                let until = <[u8; 8]>::try_from(until).map(u64::from_le_bytes).unwrap_or_default();
                if until < now_seconds {
                    continue;
                }
                if replay_key == proof.replay_key {
                    return Err(DpopError::Replayed);
                }
                next.extend_from_slice(entry);
            }
            if next.len() > SLOTS_PER_BUCKET * ENTRY_BYTES {
                return Err(DpopError::ReplayStoreFull);
            }
            next.extend_from_slice(&proof.replay_key);
            next.extend_from_slice(&proof.until_seconds.to_le_bytes());
            if store.set(&key, &next, cas).is_ok() {
                return Ok(());
            }
        }
        Err(DpopError::ReplayStoreFull)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::MemoryStore;

    fn proof(n: u32, until_seconds: u64) -> ProofUse {
        proof_at(n, until_seconds, 100)
    }

    fn proof_at(n: u32, until_seconds: u64, checked_at_seconds: u64) -> ProofUse {
        let mut replay_key = [0u8; 16];
        replay_key[4..8].copy_from_slice(&n.to_le_bytes());
        // All in bucket 0 of a one-bucket store, or spread by n.
        replay_key[..4].copy_from_slice(&n.to_le_bytes());
        ProofUse { replay_key, until_seconds, checked_at_seconds }
    }

    #[test]
    fn a_proof_is_accepted_once_until_it_expires() {
        let store = ReplayStore::default();
        let mut shared = MemoryStore::default();
        store.ensure_buckets(&mut shared);
        assert_eq!(store.record(&mut shared, &proof_at(1, 160, 100)), Ok(()));
        assert_eq!(store.record(&mut shared, &proof_at(1, 160, 150)), Err(DpopError::Replayed));
        // Checked at the window's last second, recorded whenever: still the replay it is.
        assert_eq!(store.record(&mut shared, &proof_at(1, 160, 160)), Err(DpopError::Replayed));
        assert_eq!(store.record(&mut shared, &proof_at(2, 160, 150)), Ok(()));
        // Past its window a proof is refused as stale (the proof check refuses it before this).
        assert_eq!(store.record(&mut shared, &proof_at(3, 160, 161)), Err(DpopError::Stale));
        // Expired entries make room.
        assert_eq!(store.record(&mut shared, &proof_at(1, 300, 161)), Ok(()));
    }

    #[test]
    fn buckets_are_created_once_and_never_empty() {
        let store = ReplayStore::with_capacity(SLOTS_PER_BUCKET * 3);
        let mut shared = MemoryStore::default();
        store.ensure_buckets(&mut shared);
        store.record(&mut shared, &proof(0, 200)).expect("recorded");
        // Another VM's configure leaves what is there.
        store.ensure_buckets(&mut shared);
        assert_eq!(store.record(&mut shared, &proof(0, 200)), Err(DpopError::Replayed));
        for bucket in 0..3 {
            let (value, _) = shared.get(&format!("{KEY_PREFIX}{bucket}")).expect("created");
            assert_eq!(value.first(), Some(&VERSION));
        }
    }

    #[test]
    fn a_full_bucket_refuses_until_entries_expire() {
        let store = ReplayStore::with_capacity(1);
        assert_eq!(store.capacity(), SLOTS_PER_BUCKET);
        let mut shared = MemoryStore::default();
        store.ensure_buckets(&mut shared);
        for n in 0..SLOTS_PER_BUCKET as u32 {
            assert_eq!(store.record(&mut shared, &proof(n, 200 + u64::from(n))), Ok(()));
        }
        assert_eq!(store.record(&mut shared, &proof_at(999, 300, 150)), Err(DpopError::ReplayStoreFull));
        // The first entry's window closed: room for one more.
        assert_eq!(store.record(&mut shared, &proof_at(999, 300, 201)), Ok(()));
        assert_eq!(store.record(&mut shared, &proof_at(1000, 300, 201)), Err(DpopError::ReplayStoreFull));
        let (value, _) = shared.get(&format!("{KEY_PREFIX}0")).expect("bucket");
        assert_eq!(value.len(), 1 + SLOTS_PER_BUCKET * ENTRY_BYTES, "bounded");
    }

    /// A store where another worker records `interfere` between this worker's read and write.
    struct Contended<'a> {
        inner: &'a mut MemoryStore,
        interfere: Option<ProofUse>,
    }

    impl SharedStore for Contended<'_> {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.inner.get(key)
        }
        fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), crate::keys::cache::CasMismatch> {
            if let Some(other) = self.interfere.take() {
                let _ = ReplayStore::with_capacity(1).record(self.inner, &other);
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_concurrent_writer_is_never_lost_and_never_both_accept_one_proof() {
        let store = ReplayStore::with_capacity(1);
        let mut shared = MemoryStore::default();
        store.ensure_buckets(&mut shared);
        // Two first writers of a fresh bucket: the one that lost its write reads again.
        let mut contended = Contended { inner: &mut shared, interfere: Some(proof(2, 200)) };
        assert_eq!(store.record(&mut contended, &proof(3, 200)), Ok(()));
        for n in [2, 3] {
            assert_eq!(store.record(&mut shared, &proof(n, 200)), Err(DpopError::Replayed), "{n}");
        }
        // One proof sent to two workers at once: the second to write finds the first's entry.
        let mut contended = Contended { inner: &mut shared, interfere: Some(proof(7, 200)) };
        assert_eq!(store.record(&mut contended, &proof(7, 200)), Err(DpopError::Replayed));
    }
}
