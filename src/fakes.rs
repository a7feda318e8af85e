//! Test support: the one fake of each host service the core reads, for unit, integration and
//! fuzz tests alike (so that they cannot drift apart in what they assume of Envoy).

use crate::ids::ProviderId;
use crate::keys::cache::{CasMismatch, SharedStore};
use crate::keys::{KeySet, KeyState, KeyStore};
use std::collections::HashMap;

/// Envoy's shared data, as its `SharedData` keeps it: one global counter hands out
/// compare-and-swap tokens; a write with a stale token fails; a write to a missing key, or without
/// a token, always succeeds.
#[derive(Debug, Default)]
pub struct MemoryStore {
    values: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    /// Successful writes so far, for tests that count compare-and-swap rounds.
    pub writes: usize,
}

impl MemoryStore {
    /// Every key written so far, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
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

/// A key store with a fixed answer per provider: `Some(keys)` is ready (version 0), `None` is
/// pending, and a provider past the end is unavailable.
#[derive(Debug, Default)]
pub struct FixedKeys(pub Vec<Option<KeySet>>);

impl KeyStore for FixedKeys {
    fn key_state(&self, provider: ProviderId, _kid: Option<&str>) -> KeyState<'_> {
        match self.0.get(provider.index()) {
            Some(Some(keys)) => KeyState::Ready(keys),
            Some(None) => KeyState::Pending,
            None => KeyState::Unavailable,
        }
    }

    fn keys_version(&self, provider: ProviderId) -> Option<u64> {
        self.0.get(provider.index())?.as_ref().map(|_| 0)
    }
}
