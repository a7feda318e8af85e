//! The shared record's transitions: planning a fetch and recording its result.

use super::fetch::{
    refresh_interval_ms, refresh_jitter_ms, retry_delay_ms, FetchError, FetchKind, FetchOutcome, FetchReason,
    FetchReport, FetchRequest, FetchResult, Plan,
};
use crate::ids::ProviderId;

use super::shared::{Lease, SharedRecord, Worker};
use super::{LEASE_GRACE_MS, MAX_WAITERS};
use crate::keys::discovery::{self, DiscoveryError};
use crate::keys::jwks::{self, JwksError};
use crate::keys::{HttpTarget, RemoteJwks};

/// What one worker wants from a key set when planning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Wants {
    /// Requests are parked on this key set.
    pub(super) waiting: bool,
    /// They wait because a token's `kid` is not in the keys.
    pub(super) unknown_kid: bool,
}

pub(super) fn plan_transition(
    source: &RemoteJwks,
    provider: ProviderId,
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

pub(super) fn lease_end(now_ms: u64, timeout_ms: u64) -> u64 {
    now_ms.saturating_add(timeout_ms).saturating_add(LEASE_GRACE_MS)
}

/// The next fetch for a key set: its JWKS, or first the discovery document that names it.
pub(super) fn fetch_request(
    source: &RemoteJwks,
    provider: ProviderId,
    record: &SharedRecord,
    reason: FetchReason,
) -> FetchRequest {
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
pub(super) enum Judged {
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

#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
pub(super) fn judge(
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

#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
pub(super) fn complete_transition(
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
