//! Envoy metric ids, defined once per VM, and the calls that move them. Which counter moves when,
//! and by how much, is the core's business (`scheduler`, `metrics`); this only hands numbers over.

use crate::ids::ProviderId;
use crate::metrics::{keys_in_use_gauge_name, Counter, HOST_CRYPTO_GAUGE, TOKEN_CACHE_GAUGE, WASM_MEMORY_GAUGE};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

pub(super) struct Stats {
    counters: Vec<(Counter, u32)>,
    /// Tagged counters (denials by status, reason, policy; fetches by issuer), defined on first use.
    /// Sorted by name: a handful, bounded by the configuration (a hash map would be 2 KB more
    /// code for it).
    named: Vec<(String, u32)>,
    /// Per provider, in `ProviderId` order.
    keys_in_use: Vec<Option<u32>>,
    /// The VM's linear memory size.
    memory: Option<u32>,
    /// Tokens in the verified-token cache.
    token_cache: Option<u32>,
    /// Algorithms verified by the host's `verify_signature`.
    host_crypto: Option<u32>,
}

impl Stats {
    #[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
    pub(super) fn define(issuer_tags: &[String]) -> Stats {
        let define = |kind, name: &str| hostcalls::define_metric(kind, name).ok();
        let counters = Counter::ALL
            .iter()
            .filter_map(|&counter| define(MetricType::Counter, counter.name()).map(|id| (counter, id)))
            .collect();
        let keys_in_use =
            issuer_tags.iter().map(|tag| define(MetricType::Gauge, &keys_in_use_gauge_name(tag))).collect();
        Stats {
            counters,
            named: Vec::new(),
            keys_in_use,
            memory: define(MetricType::Gauge, WASM_MEMORY_GAUGE),
            token_cache: define(MetricType::Gauge, TOKEN_CACHE_GAUGE),
            host_crypto: define(MetricType::Gauge, HOST_CRYPTO_GAUGE),
        }
    }

    pub(super) fn add(&self, counter: Counter, amount: u64) {
        if let Some((_, id)) = self.counters.iter().find(|(c, _)| *c == counter) {
            let _ = hostcalls::increment_metric(*id, i64::try_from(amount).unwrap_or(i64::MAX));
        }
    }

    /// Hands over the counts the core batched since the last tick.
    pub(super) fn flush(&self, counts: Vec<(Counter, u64)>) {
        for (counter, amount) in counts {
            self.add(counter, amount);
        }
    }

    /// Names come from `metrics::denied` and `metrics::jwks_fetches` (reason codes, configured
    /// policy names and issuers), so they are bounded by the configuration.
    pub(super) fn increment_named(&mut self, name: String) {
        let id = match self.named.binary_search_by(|(known, _)| known.as_str().cmp(&name)) {
            Ok(index) => self.named.get(index).map_or(0, |(_, id)| *id),
            Err(index) => match hostcalls::define_metric(MetricType::Counter, &name) {
                Ok(id) => {
                    self.named.insert(index, (name, id));
                    id
                }
                Err(_) => return,
            },
        };
        let _ = hostcalls::increment_metric(id, 1);
    }

    pub(super) fn record_keys_in_use(&self, provider: ProviderId, count: u64) {
        if let Some(Some(id)) = self.keys_in_use.get(provider.index()) {
            let _ = hostcalls::record_metric(*id, count);
        }
    }

    /// Linear memory in use by this VM (pages of 64 KiB), for soak runs and leak spotting.
    pub(super) fn record_memory(&self) {
        let pages = core::arch::wasm32::memory_size(0);
        record(self.memory, u64::try_from(pages).unwrap_or(u64::MAX).saturating_mul(65_536));
    }

    pub(super) fn record_token_cache(&self, entries: usize) {
        record(self.token_cache, u64::try_from(entries).unwrap_or(u64::MAX));
    }

    pub(super) fn record_host_crypto(&self, algorithms: u64) {
        record(self.host_crypto, algorithms);
    }
}

fn record(gauge: Option<u32>, value: u64) {
    if let Some(id) = gauge {
        let _ = hostcalls::record_metric(id, value);
    }
}
