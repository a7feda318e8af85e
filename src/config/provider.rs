//! Compiles a `jwtRules` entry into a provider: issuer, audiences, key source, token locations, outputs.

use super::raw::{RawIntrospection, RawJwtRule};
use super::{ConfigError, Limits};
use crate::authn::claims::{ClaimRules, RequiredClaim, CLOCK_SKEW_SECONDS};
use crate::authn::dpop::DpopMode;
use crate::authn::extract::{LocationId, TokenLocation};
use crate::authn::introspection::{
    ClientSecret, Introspection, DEFAULT_CACHE_DURATION_MS as DEFAULT_INTROSPECTION_CACHE_MS,
};
use crate::authn::{ClaimToHeader, Provider};
use crate::identity::ClaimPath;
use crate::keys::alg::{Algorithm, AlgorithmSet};
use crate::keys::jwks;
use crate::keys::{
    HttpTarget, KeySource, RemoteJwks, DEFAULT_CACHE_DURATION_MS, DEFAULT_FETCH_TIMEOUT_MS, DEFAULT_STALE_IF_ERROR_MS,
    DEFAULT_UNKNOWN_KID_REFETCH_INTERVAL_MS, DISCOVERY_PATH,
};

#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
pub(super) fn compile_provider(
    rule: RawJwtRule,
    field: &str,
    token_locations: &mut Vec<TokenLocation>,
    limits: &Limits,
) -> Result<Provider, ConfigError> {
    if rule.issuer.trim().is_empty() {
        return Err(ConfigError::new(format!("{field}.issuer"), "must not be empty"));
    }
    for (i, audience) in rule.audiences.iter().enumerate() {
        if audience.is_empty() {
            return Err(ConfigError::new(format!("{field}.audiences[{i}]"), "must not be empty"));
        }
    }
    let algorithms = algorithms(rule.algorithms.as_deref(), field)?;
    let claims = claim_rules(&rule, field)?;
    // Durations first, whatever the key source: a malformed one is reported as such.
    let timings = FetchTimings::of(&rule, field)?;
    let keys = key_source(&rule, field, limits, timings)?;
    let dpop = match rule.dpop.as_deref() {
        None => DpopMode::default(),
        Some(name) => DpopMode::from_name(name).ok_or_else(|| {
            ConfigError::new(format!("{field}.dpop"), "expected one of \"disabled\", \"optional\", \"required\"")
        })?,
    };
    let introspection = match &rule.introspection {
        Some(raw) => Some(introspection(raw, &format!("{field}.introspection"))?),
        None => None,
    };
    let mut locations = locations(&rule, field, token_locations)?;
    let reads_authorization = locations.iter().any(|id| {
        token_locations
            .get(id.0)
            .is_some_and(|l| matches!(l, TokenLocation::Header { name, .. } if name == "authorization"))
    });
    if dpop != DpopMode::Disabled && reads_authorization {
        // RFC 9449 §7.1: a key-bound token comes as `Authorization: DPoP <token>`, read wherever
        // the issuer reads the Authorization header (its default). An issuer whose tokens come in
        // another header only has no DPoP scheme to read; a key-bound token there is refused as a
        // bearer token.
        let dpop_location = location_id(token_locations, TokenLocation::header("Authorization", "DPoP "));
        if !locations.contains(&dpop_location) {
            locations.push(dpop_location);
        }
    }
    let output_payload_to_header = match &rule.output_payload_to_header {
        Some(header) => Some(validate_header_name(header, &format!("{field}.outputPayloadToHeader"))?),
        None => None,
    };
    let mut output_claim_to_headers = Vec::new();
    for (i, output) in rule.output_claim_to_headers.iter().enumerate() {
        let header = validate_header_name(&output.header, &format!("{field}.outputClaimToHeaders[{i}].header"))?;
        if output.claim.is_empty() {
            return Err(ConfigError::new(format!("{field}.outputClaimToHeaders[{i}].claim"), "must not be empty"));
        }
        // Istio's outputClaimToHeaders takes a claim name; dots reach into nested claims as in
        // its `claim` field of ClaimToHeader.
        output_claim_to_headers.push(ClaimToHeader { header, claim: ClaimPath::dotted(&output.claim) });
    }
    Ok(Provider {
        issuer: rule.issuer,
        audiences: rule.audiences,
        keys,
        algorithms,
        claims,
        dpop,
        introspection,
        locations,
        forward_original_token: rule.forward_original_token,
        output_payload_to_header,
        output_claim_to_headers,
    })
}

/// `algorithms`: the JWS algorithms this issuer's tokens may use (all ten when absent). Envoy's
/// jwt_authn has no such list; it exists so that an issuer that signs only with, say, ES256 cannot
/// have tokens accepted under an RSA key that also sits in its JWKS.
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn algorithms(names: Option<&[String]>, field: &str) -> Result<AlgorithmSet, ConfigError> {
    let Some(names) = names else { return Ok(AlgorithmSet::all()) };
    if names.is_empty() {
        return Err(ConfigError::new(format!("{field}.algorithms"), "must not be empty (leave it out to allow all)"));
    }
    let mut set = AlgorithmSet::NONE;
    for (i, name) in names.iter().enumerate() {
        let Some(alg) = Algorithm::from_name(name) else {
            let why = match name.to_ascii_uppercase().as_str() {
                "NONE" => "unsigned tokens are never accepted".to_string(),
                upper if upper.starts_with("HS") => {
                    "HMAC algorithms are not supported: a JWKS holds public keys, and using one as an HMAC secret is the classic algorithm-confusion attack".to_string()
                }
                _ => format!("{name_q} is not one of {}", AlgorithmSet::all(), name_q = crate::json::Quoted(name)),
            };
            return Err(ConfigError::new(format!("{field}.algorithms[{i}]"), why));
        };
        set.insert(alg);
    }
    Ok(set)
}

/// `clockSkew`, `requireExpiration`, `maxLifetime` and `requiredClaims`: the validation knobs
/// Istio's RequestAuthentication does not expose (Envoy's jwt_authn has the first three).
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn claim_rules(rule: &RawJwtRule, field: &str) -> Result<ClaimRules, ConfigError> {
    let seconds = |text: &Option<String>, name: &str, default_ms: u64, min_ms: u64, max_ms: u64| {
        let path = format!("{field}.{name}");
        let ms = duration_field(text, &path, default_ms, min_ms, max_ms)?;
        // Token times are whole seconds (NumericDate): a fraction here would only mislead.
        match ms % SECOND_MS {
            0 => Ok(ms / SECOND_MS),
            _ => Err(ConfigError::new(path, "must be whole seconds")),
        }
    };
    let clock_skew_seconds =
        seconds(&rule.clock_skew, "clockSkew", CLOCK_SKEW_SECONDS * SECOND_MS, 0, MAX_CLOCK_SKEW_MS)?;
    let require_expiration = rule.require_expiration.unwrap_or(true);
    let max_lifetime_seconds = match &rule.max_lifetime {
        None => None,
        Some(_) if !require_expiration => {
            return Err(ConfigError::new(
                format!("{field}.maxLifetime"),
                "needs requireExpiration: a token without exp has no lifetime to bound",
            ))
        }
        Some(_) => Some(seconds(&rule.max_lifetime, "maxLifetime", 0, SECOND_MS, 366 * DAY_MS)?),
    };
    let mut required = Vec::with_capacity(rule.required_claims.len());
    for (name, values) in &rule.required_claims {
        let claim_field = format!("{field}.requiredClaims.{name}");
        let checked_elsewhere = match name.as_str() {
            "" => return Err(ConfigError::new(format!("{field}.requiredClaims"), "a claim name must not be empty")),
            "exp" | "nbf" | "iat" => true,
            _ => false,
        };
        if checked_elsewhere {
            return Err(ConfigError::new(
                claim_field,
                "the time claims are checked by requireExpiration, clockSkew and maxLifetime",
            ));
        }
        if values.is_empty() {
            return Err(ConfigError::new(claim_field, "give at least one accepted value"));
        }
        if let Some(i) = values.iter().position(String::is_empty) {
            return Err(ConfigError::new(format!("{claim_field}[{i}]"), "must not be empty"));
        }
        required.push(RequiredClaim { claim: ClaimPath::dotted(name), values: values.clone() });
    }
    Ok(ClaimRules { clock_skew_seconds, require_expiration, max_lifetime_seconds, required })
}

/// The largest `clockSkew`: beyond ten minutes an expired token is simply accepted.
const MAX_CLOCK_SKEW_MS: u64 = 600 * SECOND_MS;

/// Inline `jwks`, `jwksUri`, or (with neither) the issuer's OIDC discovery document, with the
/// fetch settings of the last two.
/// The fetch durations of a `jwtRules` entry, each defaulted and range-checked.
#[derive(Clone, Copy)]
struct FetchTimings {
    timeout_ms: u64,
    cache_duration_ms: u64,
    stale_if_error_ms: u64,
    unknown_kid_refetch_interval_ms: u64,
}

impl FetchTimings {
    #[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
    fn of(rule: &RawJwtRule, field: &str) -> Result<FetchTimings, ConfigError> {
        let duration = |text: &Option<String>, name: &str, default_ms: u64, min_ms: u64, max_ms: u64| {
            duration_field(text, &format!("{field}.{name}"), default_ms, min_ms, max_ms)
        };
        Ok(FetchTimings {
            timeout_ms: duration(&rule.timeout, "timeout", DEFAULT_FETCH_TIMEOUT_MS, 1, HOUR_MS)?,
            cache_duration_ms: duration(
                &rule.cache_duration,
                "cacheDuration",
                DEFAULT_CACHE_DURATION_MS,
                SECOND_MS,
                DAY_MS,
            )?,
            stale_if_error_ms: duration(
                &rule.stale_if_error,
                "staleIfError",
                DEFAULT_STALE_IF_ERROR_MS,
                0,
                7 * DAY_MS,
            )?,
            unknown_kid_refetch_interval_ms: duration(
                &rule.unknown_kid_refetch_interval,
                "unknownKidRefetchInterval",
                DEFAULT_UNKNOWN_KID_REFETCH_INTERVAL_MS,
                SECOND_MS,
                HOUR_MS,
            )?,
        })
    }
}

#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn key_source(
    rule: &RawJwtRule,
    field: &str,
    limits: &Limits,
    timings: FetchTimings,
) -> Result<KeySource, ConfigError> {
    match (&rule.jwks, &rule.jwks_uri) {
        (Some(_), Some(_)) => {
            Err(ConfigError::new(format!("{field}.jwks"), "give either jwks (inline keys) or jwksUri, not both"))
        }
        (Some(inline), None) => {
            // Inline keys are never fetched: fetch settings would silently do nothing.
            let fetch_settings = [
                ("jwksCluster", rule.jwks_cluster.is_some()),
                ("timeout", rule.timeout.is_some()),
                ("cacheDuration", rule.cache_duration.is_some()),
                ("staleIfError", rule.stale_if_error.is_some()),
                ("unknownKidRefetchInterval", rule.unknown_kid_refetch_interval.is_some()),
            ];
            if let Some((name, _)) = fetch_settings.iter().find(|(_, given)| *given) {
                return Err(ConfigError::new(
                    format!("{field}.{name}"),
                    "only meaningful for fetched keys (jwksUri or OIDC discovery), not with inline jwks",
                ));
            }
            let parsed = jwks::parse_with_limit(inline.as_bytes(), limits.max_jwks_bytes)
                .map_err(|err| ConfigError::new(format!("{field}.jwks"), err.to_string()))?;
            Ok(KeySource::Inline(parsed.key_set))
        }
        (None, jwks_uri) => remote_jwks(rule, jwks_uri.as_deref(), field, timings).map(KeySource::Remote),
    }
}

#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn remote_jwks(
    rule: &RawJwtRule,
    jwks_uri: Option<&str>,
    field: &str,
    timings: FetchTimings,
) -> Result<RemoteJwks, ConfigError> {
    // Without jwksUri the issuer's OIDC discovery document names the key set.
    let (uri, uri_field, discovery) = match jwks_uri {
        Some(uri) => (uri.to_string(), format!("{field}.jwksUri"), false),
        None => {
            let discovery_uri = format!("{}{DISCOVERY_PATH}", rule.issuer.trim_end_matches('/'));
            if HttpTarget::parse(&discovery_uri).is_none() {
                return Err(ConfigError::new(
                    format!("{field}.jwksUri"),
                    format!(
                        "required (or give the keys inline in jwks): the issuer {} is not an http(s) URL, \
                         so its OIDC discovery document cannot be read",
                        crate::json::Quoted(&rule.issuer)
                    ),
                ));
            }
            (discovery_uri, format!("{field}.issuer"), true)
        }
    };
    let target = HttpTarget::parse(&uri).ok_or_else(|| {
        ConfigError::new(
            uri_field,
            format!("{uri_q} is not an absolute http:// or https:// URI", uri_q = crate::json::Quoted(&uri)),
        )
    })?;
    if let Some(name) = &rule.jwks_cluster {
        if name.trim().is_empty() {
            return Err(ConfigError::new(format!("{field}.jwksCluster"), "must not be empty"));
        }
    }
    Ok(RemoteJwks {
        cluster: target.cluster(rule.jwks_cluster.as_deref()),
        uri,
        authority: target.authority,
        path: target.path,
        discovery,
        cluster_override: rule.jwks_cluster.clone(),
        timeout_ms: timings.timeout_ms,
        cache_duration_ms: timings.cache_duration_ms,
        stale_if_error_ms: timings.stale_if_error_ms,
        unknown_kid_refetch_interval_ms: timings.unknown_kid_refetch_interval_ms,
    })
}

/// `introspection`: the endpoint (its cluster Istio's outbound one unless `cluster` says), the
/// client's credentials (exactly one of `clientSecret` and `clientSecretEnv`), `timeout` and
/// `cacheDuration`.
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn introspection(raw: &RawIntrospection, field: &str) -> Result<Introspection, ConfigError> {
    let target = HttpTarget::parse(&raw.endpoint)
        .ok_or_else(|| ConfigError::new(format!("{field}.endpoint"), "must be an absolute http:// or https:// URI"))?;
    if raw.client_id.is_empty() {
        return Err(ConfigError::new(format!("{field}.clientId"), "must not be empty"));
    }
    let secret = match (&raw.client_secret, &raw.client_secret_env) {
        (Some(secret), None) if !secret.is_empty() => ClientSecret::Inline(secret.clone()),
        (None, Some(name)) if !name.is_empty() => ClientSecret::Env(name.clone()),
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                format!("{field}.clientSecret"),
                "give clientSecret or clientSecretEnv, not both",
            ))
        }
        _ => {
            return Err(ConfigError::new(
                format!("{field}.clientSecretEnv"),
                "a non-empty clientSecretEnv (the secret from the VM's environment) or clientSecret is required",
            ))
        }
    };
    Ok(Introspection {
        cluster: target.cluster(raw.cluster.as_deref()),
        target,
        client_id: raw.client_id.clone(),
        secret,
        timeout_ms: duration_field(&raw.timeout, &format!("{field}.timeout"), DEFAULT_FETCH_TIMEOUT_MS, 1, HOUR_MS)?,
        cache_duration_ms: duration_field(
            &raw.cache_duration,
            &format!("{field}.cacheDuration"),
            DEFAULT_INTROSPECTION_CACHE_MS,
            SECOND_MS,
            DAY_MS,
        )?,
    })
}

/// The id of `location` among every provider's, added if new.
fn location_id(token_locations: &mut Vec<TokenLocation>, location: TokenLocation) -> LocationId {
    match token_locations.iter().position(|known| *known == location) {
        Some(index) => LocationId(index),
        None => {
            token_locations.push(location);
            LocationId(token_locations.len() - 1)
        }
    }
}

/// Where the issuer's tokens are accepted, as ids into the configuration-wide `token_locations`
/// (adding the ones not seen before): its `fromHeaders`, `fromParams` and `fromCookies`, or
/// Istio's defaults when none is given.
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn locations(
    rule: &RawJwtRule,
    field: &str,
    token_locations: &mut Vec<TokenLocation>,
) -> Result<Vec<LocationId>, ConfigError> {
    let explicit = !(rule.from_headers.is_empty() && rule.from_params.is_empty() && rule.from_cookies.is_empty());
    let wanted: Vec<(String, TokenLocation)> = if explicit {
        let headers = rule
            .from_headers
            .iter()
            .enumerate()
            .map(|(i, h)| (format!("{field}.fromHeaders[{i}].name"), TokenLocation::header(&h.name, &h.prefix)));
        let params = rule
            .from_params
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("{field}.fromParams[{i}]"), TokenLocation::Param(p.clone())));
        let cookies = rule
            .from_cookies
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("{field}.fromCookies[{i}]"), TokenLocation::Cookie(c.clone())));
        headers.chain(params).chain(cookies).collect()
    } else {
        // Istio's defaults: the Authorization bearer token, then the access_token parameter.
        vec![
            (field.to_string(), TokenLocation::header("Authorization", "Bearer ")),
            (field.to_string(), TokenLocation::Param("access_token".to_string())),
        ]
    };
    let mut locations = Vec::new();
    for (location_field, location) in wanted {
        if location.name().trim().is_empty() {
            return Err(ConfigError::new(location_field, "must not be empty"));
        }
        let index = location_id(token_locations, location);
        if !locations.contains(&index) {
            locations.push(index);
        }
    }
    Ok(locations)
}

#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn validate_header_name(name: &str, field: &str) -> Result<String, ConfigError> {
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
    if !valid {
        return Err(ConfigError::new(
            field,
            format!("{name_q} is not a valid HTTP header name", name_q = crate::json::Quoted(name)),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

const SECOND_MS: u64 = 1_000;

const HOUR_MS: u64 = 3_600 * SECOND_MS;

const DAY_MS: u64 = 24 * HOUR_MS;

/// An optional duration field: its default when absent, else a duration within `[min_ms, max_ms]`.
fn duration_field(
    text: &Option<String>,
    field: &str,
    default_ms: u64,
    min_ms: u64,
    max_ms: u64,
) -> Result<u64, ConfigError> {
    let Some(text) = text else { return Ok(default_ms) };
    let ms = parse_duration_ms(text).ok_or_else(|| {
        ConfigError::new(
            field,
            format!(
                "{text_q} is not a duration such as \"5s\", \"500ms\", \"2m\" or \"1h\"",
                text_q = crate::json::Quoted(text)
            ),
        )
    })?;
    if ms < min_ms {
        let least = if min_ms == 1 { "positive".to_string() } else { format!("at least {}", describe_ms(min_ms)) };
        return Err(ConfigError::new(
            field,
            format!("{text_q} is too short: must be {least}", text_q = crate::json::Quoted(text)),
        ));
    }
    if ms > max_ms {
        return Err(ConfigError::new(
            field,
            format!("{text_q} is too long: at most {}", describe_ms(max_ms), text_q = crate::json::Quoted(text)),
        ));
    }
    Ok(ms)
}

fn describe_ms(ms: u64) -> String {
    match ms {
        ms if ms % HOUR_MS == 0 => format!("{}h", ms / HOUR_MS),
        ms if ms % SECOND_MS == 0 => format!("{}s", ms / SECOND_MS),
        ms => format!("{ms}ms"),
    }
}

/// Parses Istio/protobuf duration strings: `5s`, `1.5s`, `500ms`, `2m`, `1h`. Exactly, in whole
/// milliseconds (a fraction of one is dropped), without floating point: the filter carries none
/// (src/json/number.rs says why). Below 10^12 ms (about 31 years).
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    const LIMIT_MS: u128 = 1_000_000_000_000;
    let text = text.trim();
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        return None;
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_only = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits_only(whole) || !digits_only(fraction) {
        return None;
    }
    // Digits beyond the limit's length add nothing but a refusal; beyond 20 they would overflow.
    let value = |part: &str| -> Option<u128> {
        part.bytes().try_fold(0u128, |acc, digit| {
            let next = acc * 10 + u128::from(digit - b'0');
            (next < LIMIT_MS * 1_000_000).then_some(next)
        })
    };
    let fraction = fraction.get(..fraction.len().min(18)).unwrap_or_default();
    let fraction_ms = value(fraction)? * unit_ms / 10u128.pow(fraction.len() as u32);
    let ms = value(whole)? * unit_ms + fraction_ms;
    (ms < LIMIT_MS).then_some(ms as u64)
}
