//! JWKS cache state machine: which keys each issuer has, when to fetch, and what a fetch changed.
//!
//! Pure: the host asks `due_fetches(now)` what to dispatch and reports results with
//! `on_fetch_result`. Keys survive failed refreshes (stale-if-error): a provider outage must not
//! turn into rejected traffic while the keys we hold still verify tokens.

use crate::authn::{KeyState, KeyStore};
use crate::config::{Config, KeySource, RemoteJwks};
use crate::jwks::{self, KeySet};

/// How long fetched keys are used before a background refresh.
pub const REFRESH_INTERVAL_MS: u64 = 5 * 60 * 1000;
/// First retry delay after a failed fetch; doubles per failure.
pub const RETRY_BASE_MS: u64 = 1_000;
/// Longest delay between retries.
pub const RETRY_MAX_MS: u64 = 30_000;

/// A fetch the host should dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub provider: usize,
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
        body: &'a [u8],
    },
    /// Dispatch failed, timed out, or the connection broke.
    NoResponse,
}

/// What a fetch result did, for the log and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchReport {
    Updated { keys: usize, skipped: Vec<String> },
    Failed { reason: String, retry_in_ms: u64, kept_previous_keys: bool },
}

#[derive(Debug)]
enum Entry {
    Inline(KeySet),
    Remote(RemoteEntry),
}

#[derive(Debug)]
struct RemoteEntry {
    source: RemoteJwks,
    keys: Option<KeySet>,
    in_flight: bool,
    consecutive_failures: u32,
    /// When the next fetch is due (a refresh, or a retry after failure).
    next_fetch_ms: u64,
}

#[derive(Debug)]
pub struct JwksCache {
    entries: Vec<Entry>,
    /// `limits.maxJwksBytes`: larger fetched documents are refused.
    max_jwks_bytes: usize,
}

impl JwksCache {
    /// Inline keys are ready at once; remote ones are due for a fetch immediately.
    pub fn new(config: &Config) -> JwksCache {
        let entries = config
            .providers
            .iter()
            .map(|provider| match &provider.keys {
                KeySource::Inline(keys) => Entry::Inline(keys.clone()),
                KeySource::Remote(source) => Entry::Remote(RemoteEntry {
                    source: source.clone(),
                    keys: None,
                    in_flight: false,
                    consecutive_failures: 0,
                    next_fetch_ms: 0,
                }),
            })
            .collect();
        JwksCache { entries, max_jwks_bytes: config.limits.max_jwks_bytes }
    }

    /// Fetches to start now; each is marked in flight until its result is reported.
    pub fn due_fetches(&mut self, now_ms: u64) -> Vec<FetchRequest> {
        let mut due = Vec::new();
        for (provider, entry) in self.entries.iter_mut().enumerate() {
            if let Entry::Remote(remote) = entry {
                if !remote.in_flight && now_ms >= remote.next_fetch_ms {
                    remote.in_flight = true;
                    due.push(FetchRequest {
                        provider,
                        cluster: remote.source.cluster.clone(),
                        authority: remote.source.authority.clone(),
                        path: remote.source.path.clone(),
                        timeout_ms: remote.source.timeout_ms,
                    });
                }
            }
        }
        due
    }

    /// Records the result of the fetch for `provider`.
    pub fn on_fetch_result(&mut self, provider: usize, result: FetchResult<'_>, now_ms: u64) -> FetchReport {
        let Some(Entry::Remote(remote)) = self.entries.get_mut(provider) else {
            return FetchReport::Failed {
                reason: "no remote JWKS for this provider".into(),
                retry_in_ms: 0,
                kept_previous_keys: false,
            };
        };
        remote.in_flight = false;
        let parsed = match result {
            FetchResult::Response { status: 200, body } => {
                jwks::parse_with_limit(body, self.max_jwks_bytes).map_err(|err| err.to_string())
            }
            FetchResult::Response { status, .. } => Err(format!("{} answered HTTP {status}", remote.source.uri)),
            FetchResult::NoResponse => Err(format!(
                "no response from {} (cluster {:?}): timed out, refused or unknown cluster",
                remote.source.uri, remote.source.cluster
            )),
        };
        match parsed {
            Ok(parsed) => {
                let count = parsed.key_set.keys.len();
                remote.keys = Some(parsed.key_set);
                remote.consecutive_failures = 0;
                remote.next_fetch_ms = now_ms.saturating_add(REFRESH_INTERVAL_MS);
                FetchReport::Updated { keys: count, skipped: parsed.skipped }
            }
            Err(reason) => {
                remote.consecutive_failures = remote.consecutive_failures.saturating_add(1);
                let exponent = remote.consecutive_failures.saturating_sub(1).min(16);
                let retry_in_ms = RETRY_BASE_MS.saturating_mul(1 << exponent).min(RETRY_MAX_MS);
                remote.next_fetch_ms = now_ms.saturating_add(retry_in_ms);
                FetchReport::Failed { reason, retry_in_ms, kept_previous_keys: remote.keys.is_some() }
            }
        }
    }
}

impl KeyStore for JwksCache {
    fn key_state(&self, provider: usize) -> KeyState<'_> {
        match self.entries.get(provider) {
            Some(Entry::Inline(keys)) => KeyState::Ready(keys),
            Some(Entry::Remote(RemoteEntry { keys: Some(keys), .. })) => KeyState::Ready(keys),
            Some(Entry::Remote(RemoteEntry { in_flight: true, .. })) => KeyState::Pending,
            _ => KeyState::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys;
    use serde_json::json;

    fn config() -> Config {
        let inline = json!({"keys": [testkeys::jwk(testkeys::key(0), "a")]}).to_string();
        Config::parse(
            json!({"jwtRules": [
                {"issuer": "remote", "jwksUri": "https://idp.example:8443/certs", "timeout": "2s"},
                {"issuer": "inline", "jwks": inline}
            ]})
            .to_string()
            .as_bytes(),
        )
        .expect("valid")
    }

    fn state(cache: &JwksCache, provider: usize) -> &'static str {
        match cache.key_state(provider) {
            KeyState::Ready(_) => "ready",
            KeyState::Pending => "pending",
            KeyState::Unavailable => "unavailable",
        }
    }

    #[test]
    fn fetch_then_refresh_and_keep_keys_through_failures() {
        let mut cache = JwksCache::new(&config());
        assert_eq!(state(&cache, 1), "ready");
        assert_eq!(state(&cache, 0), "unavailable");
        let due = cache.due_fetches(1_000);
        assert_eq!(
            due,
            vec![FetchRequest {
                provider: 0,
                cluster: "outbound|8443||idp.example".into(),
                authority: "idp.example:8443".into(),
                path: "/certs".into(),
                timeout_ms: 2_000,
            }]
        );
        assert_eq!(state(&cache, 0), "pending");
        assert!(cache.due_fetches(1_001).is_empty(), "one fetch at a time");

        let body = json!({"keys": [testkeys::jwk(testkeys::key(0), "a")]}).to_string();
        let report = cache.on_fetch_result(0, FetchResult::Response { status: 200, body: body.as_bytes() }, 2_000);
        assert_eq!(report, FetchReport::Updated { keys: 1, skipped: vec![] });
        assert_eq!(state(&cache, 0), "ready");
        assert!(cache.due_fetches(2_000 + REFRESH_INTERVAL_MS - 1).is_empty());
        assert_eq!(cache.due_fetches(2_000 + REFRESH_INTERVAL_MS).len(), 1);

        // A failed refresh keeps the keys and backs off.
        let now = 2_000 + REFRESH_INTERVAL_MS;
        let report = cache.on_fetch_result(0, FetchResult::Response { status: 503, body: b"" }, now);
        assert!(matches!(report, FetchReport::Failed { retry_in_ms: RETRY_BASE_MS, kept_previous_keys: true, .. }));
        assert_eq!(state(&cache, 0), "ready");
        assert!(cache.due_fetches(now + RETRY_BASE_MS - 1).is_empty());
        assert_eq!(cache.due_fetches(now + RETRY_BASE_MS).len(), 1);
        let report = cache.on_fetch_result(0, FetchResult::NoResponse, now + RETRY_BASE_MS);
        assert!(matches!(report, FetchReport::Failed { retry_in_ms: 2_000, .. }));
    }

    #[test]
    fn failed_first_fetch_leaves_no_keys_and_backs_off_to_the_cap() {
        let mut cache = JwksCache::new(&config());
        let mut now = 0;
        let mut last_retry = 0;
        for _ in 0..10 {
            assert_eq!(cache.due_fetches(now).len(), 1);
            let report = cache.on_fetch_result(0, FetchResult::Response { status: 200, body: b"<html>" }, now);
            let FetchReport::Failed { retry_in_ms, kept_previous_keys: false, .. } = report else {
                panic!("{report:?}")
            };
            assert_eq!(state(&cache, 0), "unavailable");
            assert!(retry_in_ms >= last_retry && retry_in_ms <= RETRY_MAX_MS);
            last_retry = retry_in_ms;
            now += retry_in_ms;
        }
        assert_eq!(last_retry, RETRY_MAX_MS);
    }
}
