//! Metrics: the counters the filter keeps, with the names operators see in Envoy's stats.
//!
//! Envoy files every stat a Wasm plugin defines under its `wasmcustom.` namespace, and its
//! Prometheus endpoint strips that namespace: `jwt_authz.allowed_total` is scraped as
//! `jwt_authz_allowed_total`. The Proxy-Wasm ABI has no stat tags, so dimensions (status,
//! reason, policy) are written into the name in Istio's tag encoding, `tag=.=value;.;`, which
//! Envoy turns into Prometheus labels given the matching `stats_tags` (in Istio: the proxy's
//! `extraStatTags`). Only reason codes (a closed set) and policy names (from the configuration)
//! ever go into a name, never request data, so the number of stats is bounded by the configuration.

use crate::ids::ProviderId;
use crate::keys::{KeyState, KeyStore};
use std::cell::Cell;

/// Every stat name starts with this; Istio and plain Envoy can select them by it.
const PREFIX: &str = "jwt_authz.";

/// The `policy` tag of a denial no single policy decided: no ALLOW policy matched, or the
/// request was refused before policies were consulted (bad path, rejected token).
const NO_POLICY: &str = "-";

/// Gauge: bytes of Wasm linear memory of the VM that last reported (every VM runs the same code
/// under the same kind of load; a steadily growing value means a leak). Set on every tick.
pub const WASM_MEMORY_GAUGE: &str = "jwt_authz.wasm_memory_bytes";

/// Gauge: tokens in the verified-token cache of the VM that last reported (at most
/// `limits.tokenCacheSize`). Set on every tick.
pub const TOKEN_CACHE_GAUGE: &str = "jwt_authz.token_cache_entries";

/// Gauge: how many of the ten signature algorithms the VM that last checked one hands to the host's
/// `verify_signature`: each once its check at that VM's first token of it passed (up to 6 on Envoy
/// ≥ 1.31 with `signatureBackend: auto`; 0 with `vm`, on hosts without the function, and before
/// any token).
pub const HOST_CRYPTO_GAUGE: &str = "jwt_authz.host_crypto_algorithms";

/// Every untagged counter, so the host can define them all once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Allowed,
    /// A token's issuer had its keys cached when the request arrived.
    JwksCacheHit,
    /// A token's issuer had no keys cached: the request waited for a fetch or was refused.
    JwksCacheMiss,
    JwksFetchSuccess,
    JwksFetchFailure,
    JwksRefetchUnknownKid,
    RequestsWaitedForKeys,
    /// An AUDIT policy matched.
    Audited,
    /// Enforcing the dry-run policies would have denied an allowed request.
    DryRunWouldDeny,
    /// Enforcing the dry-run policies would have allowed a denied request.
    DryRunWouldAllow,
    /// Every denial, untagged: readable without tag extractors (by status, reason and policy:
    /// `denied`).
    Denied,
}

impl Counter {
    pub const ALL: [Counter; 11] = [
        Counter::Allowed,
        Counter::JwksCacheHit,
        Counter::JwksCacheMiss,
        Counter::JwksFetchSuccess,
        Counter::JwksFetchFailure,
        Counter::JwksRefetchUnknownKid,
        Counter::RequestsWaitedForKeys,
        Counter::Audited,
        Counter::DryRunWouldDeny,
        Counter::DryRunWouldAllow,
        Counter::Denied,
    ];

    /// Counters every allowed request moves: summed in the VM and handed to Envoy on the next tick
    /// (a call out of the VM costs about as much as a whole policy evaluation); the others are
    /// rare and go out at once.
    pub fn is_batched(self) -> bool {
        matches!(self, Counter::Allowed | Counter::JwksCacheHit | Counter::JwksCacheMiss | Counter::Denied)
    }

    /// Stat name; Envoy shows it under `wasmcustom.` (and in Prometheus without it).
    pub fn name(self) -> &'static str {
        match self {
            Counter::Allowed => "jwt_authz.allowed_total",
            Counter::JwksCacheHit => "jwt_authz.jwks_cache_hits_total",
            Counter::JwksCacheMiss => "jwt_authz.jwks_cache_misses_total",
            Counter::JwksFetchSuccess => "jwt_authz.jwks_fetch_success_total",
            Counter::JwksFetchFailure => "jwt_authz.jwks_fetch_failure_total",
            Counter::JwksRefetchUnknownKid => "jwt_authz.jwks_refetch_unknown_kid_total",
            Counter::RequestsWaitedForKeys => "jwt_authz.requests_waited_for_keys_total",
            Counter::Audited => "jwt_authz.audited_total",
            Counter::DryRunWouldDeny => "jwt_authz.dry_run_denied_total",
            Counter::DryRunWouldAllow => "jwt_authz.dry_run_allowed_total",
            Counter::Denied => "jwt_authz.denials_total",
        }
    }
}

/// The counter of denials with this status, reason code and deciding policy:
/// `jwt_authz.status=.=403;.;reason=.=rbac_access_denied;.;policy=.=shop;.;denied_total`, which
/// Envoy exports as `jwt_authz_denied_total{status="403",reason="rbac_access_denied",policy="shop"}`.
/// The tags sit between the prefix and the metric so that removing them leaves a clean name.
pub fn denied(status: u32, reason: &str, policy: Option<&str>) -> String {
    let policy = policy.map(tag_value).unwrap_or_else(|| NO_POLICY.to_string());
    format!("{PREFIX}status=.={status};.;reason=.={};.;policy=.={policy};.;denied_total", tag_value(reason))
}

/// A tag value safe inside a stat name: anything but ASCII letters, digits, `-` and `_` becomes
/// `_`. Dots would split the name into Envoy stat segments and could be matched by other tag
/// extractors (Istio's own look for `cache.` and `component.`); `;` and `=` would end the tag.
fn tag_value(text: &str) -> String {
    let value: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if value.is_empty() {
        NO_POLICY.to_string()
    } else {
        value
    }
}

/// A key store that remembers how a request's key lookups went: the JWKS cache hit/miss counters.
pub struct KeyLookups<'a> {
    store: &'a dyn KeyStore,
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl<'a> KeyLookups<'a> {
    pub fn new(store: &'a dyn KeyStore) -> Self {
        KeyLookups { store, hits: Cell::new(0), misses: Cell::new(0) }
    }

    /// `(counter, amount)` to add for the lookups made so far; zero amounts are left out.
    pub fn tally(&self) -> Vec<(Counter, u64)> {
        [(Counter::JwksCacheHit, self.hits.get()), (Counter::JwksCacheMiss, self.misses.get())]
            .into_iter()
            .filter(|(_, amount)| *amount > 0)
            .collect()
    }
}

impl KeyStore for KeyLookups<'_> {
    fn key_state(&self, provider: ProviderId, kid: Option<&str>) -> KeyState<'_> {
        let state = self.store.key_state(provider, kid);
        let counter = if matches!(state, KeyState::Ready(_)) { &self.hits } else { &self.misses };
        counter.set(counter.get().saturating_add(1));
        state
    }

    fn keys_version(&self, provider: ProviderId) -> Option<u64> {
        self.store.keys_version(provider)
    }
}

/// Each issuer's `issuer` tag value, in `ProviderId` order: its characters other than ASCII letters,
/// digits, `-` and `_` as `_`, and, where two issuers would share one (`https://idp/a` and
/// `https://idp/a/`), `_2`, `_3`, … after the later ones, so that no two issuers' gauges and
/// counters merge.
pub fn issuer_tags<'a>(issuers: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for issuer in issuers {
        let base = tag_value(issuer);
        let mut tag = base.clone();
        let mut n = 1;
        while tags.contains(&tag) {
            n += 1;
            tag = format!("{base}_{n}");
        }
        tags.push(tag);
    }
    tags
}

/// Name of the gauge of keys in use for the issuer tagged `issuer` (`issuer_tags`):
/// `jwt_authz.issuer=.=https___idp_realms_shop;.;jwks_keys_in_use`, exported as
/// `jwt_authz_jwks_keys_in_use{issuer="https___idp_realms_shop"}` with the `issuer` tag extractor.
pub fn keys_in_use_gauge_name(issuer: &str) -> String {
    format!("{PREFIX}issuer=.={};.;jwks_keys_in_use", tag_value(issuer))
}

/// The counter of the JWKS fetches of the issuer tagged `issuer` (`issuer_tags`) with this result
/// (`success` or `failure`):
/// `jwt_authz_jwks_fetches_total{issuer, result}`. Beside the untagged `jwks_fetch_success_total`
/// and `jwks_fetch_failure_total`, which need no tag extractor.
pub fn jwks_fetches(issuer: &str, success: bool) -> String {
    let result = if success { "success" } else { "failure" };
    format!("{PREFIX}issuer=.={};.;result=.={result};.;jwks_fetches_total", tag_value(issuer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FixedKeys;
    use crate::keys::KeySet;

    #[test]
    fn names_share_the_prefix_and_follow_prometheus_conventions() {
        for counter in Counter::ALL {
            let name = counter.name();
            assert!(name.starts_with(PREFIX) && name.ends_with("_total"), "{name}");
            assert!(!name.contains("cache."), "{name} would be caught by Istio's `cache` tag extractor");
        }
    }

    #[test]
    fn denied_names_carry_status_reason_and_policy_in_istio_tag_encoding() {
        assert_eq!(
            denied(403, "rbac_access_denied", Some("shop")),
            "jwt_authz.status=.=403;.;reason=.=rbac_access_denied;.;policy=.=shop;.;denied_total"
        );
        assert_eq!(
            denied(401, "jwt_expired", None),
            "jwt_authz.status=.=401;.;reason=.=jwt_expired;.;policy=.=-;.;denied_total"
        );
    }

    #[test]
    fn issuers_are_tags_not_part_of_the_name() {
        assert_eq!(
            keys_in_use_gauge_name("https://idp.example/realms/shop"),
            "jwt_authz.issuer=.=https___idp_example_realms_shop;.;jwks_keys_in_use"
        );
        assert_eq!(
            jwks_fetches("http://kc:8080/realms/a", false),
            "jwt_authz.issuer=.=http___kc_8080_realms_a;.;result=.=failure;.;jwks_fetches_total"
        );
    }

    #[test]
    fn issuers_that_sanitize_alike_get_distinct_tags() {
        let tags = issuer_tags(["https://idp/a", "https://idp/a/", "https://idp/a?", "https://idp/b"]);
        assert_eq!(tags, ["https___idp_a", "https___idp_a_", "https___idp_a__2", "https___idp_b"]);
        let tags = issuer_tags(["a.b", "a:b", "a_b"]);
        assert_eq!(tags, ["a_b", "a_b_2", "a_b_3"]);
    }

    #[test]
    fn policy_names_cannot_break_the_name_or_its_tags() {
        assert_eq!(tag_value("ns.allow shop;x=.=y"), "ns_allow_shop_x___y");
        assert_eq!(tag_value("deny-debug_2"), "deny-debug_2");
        assert_eq!(tag_value(""), NO_POLICY);
        let name = denied(403, "rbac_access_denied", Some("a;.;policy=.=evil"));
        assert_eq!(name.matches(";.;").count(), 3, "{name}");
    }

    /// Every denial reason code. The matches have no wildcard, so a new variant fails to compile
    /// here until it is listed, and then fails the test until docs/operations.md documents it.
    fn every_reason_code() -> Vec<&'static str> {
        use crate::authn::claims::ClaimsError;
        use crate::authn::dpop::DpopError;
        use crate::authn::introspection::IntrospectionError;
        use crate::authn::jwt::JwtError;
        use crate::authn::verify::VerifyError;
        use crate::authn::AuthnError;
        use crate::authz::path::PathError;
        use crate::deny::Denial;
        let paths = [
            PathError::NotAbsolute,
            PathError::InvalidPercentEncoding,
            PathError::EncodedSlash,
            PathError::Backslash,
            PathError::ControlCharacter,
        ];
        let tokens = [
            JwtError::TooLarge,
            JwtError::BadFormat,
            JwtError::BadBase64,
            JwtError::BadJson,
            JwtError::AlgorithmNotAllowed,
            JwtError::CriticalHeader,
            JwtError::DuplicateMember,
            JwtError::TooDeep,
        ];
        let signatures = [VerifyError::KeyNotFound, VerifyError::SignatureInvalid];
        let claims = [
            ClaimsError::MissingExpiration,
            ClaimsError::Expired,
            ClaimsError::NotYetValid,
            ClaimsError::AudienceNotAllowed,
            ClaimsError::LifetimeTooLong,
            ClaimsError::RequiredClaimMismatch,
            ClaimsError::BadConfirmation,
        ];
        let mut authn: Vec<AuthnError> =
            vec![AuthnError::UnknownIssuer, AuthnError::JwksUnavailable, AuthnError::CertificateMismatch];
        authn.extend(tokens.map(AuthnError::Token));
        authn.extend(signatures.map(AuthnError::Signature));
        authn.extend(claims.map(AuthnError::Claims));
        authn.extend(DpopError::ALL.map(AuthnError::Dpop));
        authn.extend(
            [
                IntrospectionError::Inactive,
                IntrospectionError::Failed,
                IntrospectionError::IssuerMismatch,
                IntrospectionError::NotAnAccessToken,
            ]
            .map(AuthnError::Introspection),
        );
        let mut denials: Vec<Denial> = paths.into_iter().map(Denial::BadPath).collect();
        denials.extend(authn.into_iter().map(Denial::InvalidToken));
        denials.push(Denial::MissingToken { policy: None });
        denials.push(Denial::Forbidden { policy: None });
        for denial in &denials {
            match denial {
                Denial::BadPath(
                    PathError::NotAbsolute
                    | PathError::InvalidPercentEncoding
                    | PathError::EncodedSlash
                    | PathError::Backslash
                    | PathError::ControlCharacter,
                )
                | Denial::UnsafePath(_)
                | Denial::MissingToken { .. }
                | Denial::Forbidden { .. } => {}
                Denial::InvalidToken(error) => match error {
                    AuthnError::Token(
                        JwtError::TooLarge
                        | JwtError::BadFormat
                        | JwtError::BadBase64
                        | JwtError::BadJson
                        | JwtError::AlgorithmNotAllowed
                        | JwtError::CriticalHeader
                        | JwtError::DuplicateMember
                        | JwtError::TooDeep,
                    )
                    | AuthnError::UnknownIssuer
                    | AuthnError::Signature(VerifyError::KeyNotFound | VerifyError::SignatureInvalid)
                    | AuthnError::Claims(
                        ClaimsError::MissingExpiration
                        | ClaimsError::Expired
                        | ClaimsError::NotYetValid
                        | ClaimsError::AudienceNotAllowed
                        | ClaimsError::LifetimeTooLong
                        | ClaimsError::RequiredClaimMismatch
                        | ClaimsError::BadConfirmation,
                    )
                    | AuthnError::JwksUnavailable
                    | AuthnError::CertificateMismatch
                    | AuthnError::Dpop(
                        DpopError::BearerDowngrade
                        | DpopError::Unbound
                        | DpopError::Required
                        | DpopError::Disabled
                        | DpopError::ProofMissing
                        | DpopError::MultipleProofs
                        | DpopError::Malformed
                        | DpopError::WrongType
                        | DpopError::BadKey
                        | DpopError::KeyMismatch
                        | DpopError::Signature
                        | DpopError::MethodMismatch
                        | DpopError::UriMismatch
                        | DpopError::Stale
                        | DpopError::TokenHashMismatch
                        | DpopError::Replayed
                        | DpopError::ReplayStoreFull,
                    )
                    | AuthnError::Introspection(
                        IntrospectionError::Inactive
                        | IntrospectionError::Failed
                        | IntrospectionError::IssuerMismatch
                        | IntrospectionError::NotAnAccessToken,
                    ) => {}
                },
            }
        }
        denials.iter().map(Denial::code).collect()
    }

    /// Every code a failed JWKS or discovery fetch logs (`JWKS fetch for … failed (<code>)`), by
    /// the same exhaustive-match rule as the denial codes.
    fn every_fetch_failure_code() -> Vec<&'static str> {
        use crate::keys::cache::FetchError;
        use crate::keys::discovery::DiscoveryError;
        use crate::keys::jwks::JwksError;
        let jwks = [
            JwksError::TooLarge(0, 0),
            JwksError::NotJson(String::new()),
            JwksError::NoKeysArray,
            JwksError::NoUsableKey(Vec::new()),
        ];
        let discovery = [
            DiscoveryError::TooLarge(0),
            DiscoveryError::NotJson(String::new()),
            DiscoveryError::IssuerMismatch { expected: String::new(), found: None },
            DiscoveryError::NoJwksUri,
            DiscoveryError::BadJwksUri(String::new()),
        ];
        let mut errors = vec![
            FetchError::NoResponse { uri: String::new(), cluster: String::new() },
            FetchError::HttpStatus { uri: String::new(), status: 500 },
        ];
        errors.extend(jwks.into_iter().map(FetchError::Jwks));
        errors.extend(discovery.into_iter().map(FetchError::Discovery));
        for error in &errors {
            match error {
                FetchError::NoResponse { .. }
                | FetchError::HttpStatus { .. }
                | FetchError::Jwks(
                    JwksError::TooLarge(..)
                    | JwksError::NotJson(_)
                    | JwksError::NoKeysArray
                    | JwksError::NoUsableKey(_),
                )
                | FetchError::Discovery(
                    DiscoveryError::TooLarge(_)
                    | DiscoveryError::NotJson(_)
                    | DiscoveryError::IssuerMismatch { .. }
                    | DiscoveryError::NoJwksUri
                    | DiscoveryError::BadJwksUri(_),
                ) => {}
            }
        }
        errors.iter().map(FetchError::code).collect()
    }

    #[test]
    fn every_metric_and_reason_code_is_documented_in_the_operations_guide() {
        let guide = include_str!("../docs/operations.md");
        for counter in Counter::ALL {
            let prometheus = counter.name().replace('.', "_");
            assert!(guide.contains(&format!("`{prometheus}`")), "docs/operations.md does not document {prometheus}");
        }
        assert!(guide.contains("`jwt_authz_denied_total{status, reason, policy}`"));
        for codes in [every_reason_code(), every_fetch_failure_code()] {
            let distinct: std::collections::HashSet<_> = codes.iter().collect();
            assert_eq!(distinct.len(), codes.len(), "reason codes must be unique: {codes:?}");
            for code in codes {
                assert!(guide.contains(&format!("`{code}`")), "docs/operations.md does not document reason {code}");
            }
        }
    }

    #[test]
    fn key_lookups_count_hits_and_misses() {
        let store = FixedKeys(vec![Some(KeySet::default()), None]);
        let lookups = KeyLookups::new(&store);
        assert!(lookups.tally().is_empty());
        assert!(matches!(lookups.key_state(ProviderId(0), None), KeyState::Ready(_)));
        assert!(matches!(lookups.key_state(ProviderId(0), None), KeyState::Ready(_)));
        assert!(matches!(lookups.key_state(ProviderId(1), None), KeyState::Pending));
        assert!(matches!(lookups.key_state(ProviderId(7), None), KeyState::Unavailable));
        assert_eq!(lookups.tally(), vec![(Counter::JwksCacheHit, 2), (Counter::JwksCacheMiss, 2)]);
    }

    #[test]
    fn names_are_distinct_and_issuers_are_sanitized() {
        let mut names: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
        assert_eq!(
            keys_in_use_gauge_name("http://127.0.0.1:8180/realms/shop"),
            "jwt_authz.issuer=.=http___127_0_0_1_8180_realms_shop;.;jwks_keys_in_use"
        );
    }
}
