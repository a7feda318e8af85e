//! Fetches: what to ask for, what came back, what to report, and when the next one is due.

use super::{MAX_AGE_FLOOR_MS, RETRY_BASE_MS, RETRY_MAX_MS};
use crate::ids::ProviderId;
use crate::keys::discovery::DiscoveryError;
use crate::keys::jwks::JwksError;
use std::fmt;

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
    pub provider: ProviderId,
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
    /// No response: timeout, reset, or the cluster does not exist.
    NoResponse { uri: String, cluster: String },
    /// A response other than 200.
    HttpStatus { uri: String, status: u32 },
    /// A 200 whose key set is refused.
    Jwks(JwksError),
    /// A 200 whose discovery document is refused.
    Discovery(DiscoveryError),
}

impl FetchError {
    /// Stable reason code, for the fetch-failure log line.
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
                write!(
                    f,
                    "no response from {uri} (cluster {cluster_q}): timed out, refused or unknown cluster",
                    cluster_q = crate::json::Quoted(cluster)
                )
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
pub(super) fn max_age(header: &str) -> Option<u64> {
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
pub(super) fn refresh_jitter_ms(refresh_ms: u64, random: u64) -> u64 {
    random % (refresh_ms / 10 + 1)
}
