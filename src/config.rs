//! Plugin configuration: parsed once from JSON, validated, and compiled into matchers and providers.
//!
//! The JSON shape is Istio's RequestAuthentication `jwtRules` and AuthorizationPolicy `rules`, so
//! users can paste theirs. Unlike Istio, which skips a rule it cannot understand, we refuse the
//! whole configuration and say which field is wrong: a silently dropped rule changes who gets in.

use crate::cidr::Cidr;
use crate::config_json;
use crate::extract::TokenLocation;
use crate::jwks::{self, KeySet};
use crate::jwt::TokenLimits;
use crate::path::{PathTemplate, UnsafePathAction};
use crate::policy::{
    ClaimPath, Condition, ConditionKey, ConnectionReads, HostMatch, Operation, PathMatch, Policies, Policy,
    PrincipalMatch, RequirementAction, Rule, Source, StringMatch, TokenRequirement, ValueKind, ValueMatch,
    DEFAULT_SPACE_DELIMITED_CLAIMS,
};
use serde::Deserialize;
use std::fmt;

/// Clock skew allowed when checking `exp` and `nbf`, as in Istio and Envoy.
pub const CLOCK_SKEW_SECONDS: u64 = 60;
/// JWKS fetch timeout when `timeout` is not given (Istio's default).
pub const DEFAULT_FETCH_TIMEOUT_MS: u64 = 5_000;
/// How long fetched keys are used before a background refresh, when `cacheDuration` is not given.
pub const DEFAULT_CACHE_DURATION_MS: u64 = 5 * 60 * 1000;
/// How long keys outlive their refresh while the provider keeps failing, when `staleIfError` is not given.
pub const DEFAULT_STALE_IF_ERROR_MS: u64 = 60 * 60 * 1000;
/// Shortest time between two refetches for unknown `kid`s, when `unknownKidRefetchInterval` is not given.
pub const DEFAULT_UNKNOWN_KID_REFETCH_INTERVAL_MS: u64 = 30_000;
/// Where OIDC discovery documents live, below the issuer URL (OpenID Connect Discovery 1.0 §4).
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// A configuration error: the JSON path of the offending field and why it is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError { field: field.into(), reason: reason.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid jwt-authz configuration: {}", self.reason)
        } else {
            write!(f, "invalid jwt-authz configuration: {}: {}", self.field, self.reason)
        }
    }
}

/// The compiled configuration: everything a request needs, computed once in `on_configure`.
#[derive(Debug)]
pub struct Config {
    pub providers: Vec<Provider>,
    /// Every distinct place a token may be, across all providers, in the order they are tried.
    pub token_locations: Vec<TokenLocation>,
    pub policies: Policies,
    /// Headers the filter writes (claim and payload outputs); a client's own copies are removed.
    pub output_headers: Vec<String>,
    /// Per-path token requirements, first match wins.
    pub token_requirements: Vec<TokenRequirement>,
    /// Proxies in front of Envoy that append to `X-Forwarded-For` (`remote.ip`).
    pub num_trusted_proxies: u32,
    pub unsafe_paths: UnsafePathAction,
    pub limits: Limits,
    /// The connection attributes policies and requirements read: the host fetches only these.
    pub connection_reads: ConnectionReads,
}

/// Bounds on attacker-sized input (`limits`). Over-limit tokens get 401; over-limit JWKS documents
/// are refused like any other bad fetch (previous keys kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub token: TokenLimits,
    pub max_jwks_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { token: TokenLimits::default(), max_jwks_bytes: jwks::MAX_JWKS_BYTES }
    }
}

/// One trusted issuer (a `jwtRules` entry).
#[derive(Debug)]
pub struct Provider {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub keys: KeySource,
    /// Indices into `Config::token_locations` where this issuer's tokens are accepted.
    pub locations: Vec<usize>,
    pub forward_original_token: bool,
    pub output_payload_to_header: Option<String>,
    pub output_claim_to_headers: Vec<ClaimToHeader>,
}

#[derive(Debug)]
pub enum KeySource {
    /// Keys given in the configuration (`jwks`).
    Inline(KeySet),
    /// Keys fetched with a dispatched HTTP call.
    Remote(RemoteJwks),
}

/// Where and how to fetch a JWKS, and how long to keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    /// The JWKS URI (`jwksUri`), or the issuer's OIDC discovery document when `discovery` is set.
    pub uri: String,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    /// `uri` is `<issuer>/.well-known/openid-configuration`; its `jwks_uri` names the key set.
    pub discovery: bool,
    /// `jwksCluster` as given: also the cluster of a discovered `jwks_uri` when set.
    pub cluster_override: Option<String>,
    pub timeout_ms: u64,
    pub cache_duration_ms: u64,
    pub stale_if_error_ms: u64,
    pub unknown_kid_refetch_interval_ms: u64,
}

/// Where an HTTP request goes: the Envoy cluster and the request's `:authority` and `:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub host: String,
    pub port: u16,
    pub authority: String,
    pub path: String,
}

impl HttpTarget {
    /// Parses an absolute `http://` or `https://` URI; `None` when it is anything else.
    pub fn parse(uri: &str) -> Option<HttpTarget> {
        parse_http_uri(uri)
    }

    /// The cluster to send to: `jwksCluster` when given, else the Istio outbound cluster of the
    /// URI's host and port (a ServiceEntry for the identity provider's host creates it).
    pub fn cluster(&self, cluster_override: Option<&str>) -> String {
        match cluster_override {
            Some(name) => name.to_string(),
            None => format!("outbound|{}||{}", self.port, self.host),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: ClaimPath,
}

// ---------------------------------------------------------------------------------------------
// The JSON shape.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    jwt_rules: Vec<RawJwtRule>,
    #[serde(default)]
    policies: Vec<RawPolicy>,
    #[serde(default)]
    token_requirements: Vec<RawTokenRequirement>,
    #[serde(default)]
    num_trusted_proxies: u32,
    unsafe_paths: Option<String>,
    #[serde(default)]
    space_delimited_claims: Vec<String>,
    limits: Option<RawLimits>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawLimits {
    max_token_bytes: Option<u64>,
    max_claim_depth: Option<u64>,
    max_jwks_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawJwtRule {
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    jwks_uri: Option<String>,
    jwks_cluster: Option<String>,
    jwks: Option<String>,
    #[serde(default)]
    from_headers: Vec<RawFromHeader>,
    #[serde(default)]
    from_params: Vec<String>,
    #[serde(default)]
    from_cookies: Vec<String>,
    #[serde(default)]
    forward_original_token: bool,
    output_payload_to_header: Option<String>,
    #[serde(default)]
    output_claim_to_headers: Vec<RawClaimToHeader>,
    timeout: Option<String>,
    cache_duration: Option<String>,
    stale_if_error: Option<String>,
    unknown_kid_refetch_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFromHeader {
    name: String,
    #[serde(default)]
    prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaimToHeader {
    header: String,
    claim: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    name: String,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTokenRequirement {
    #[serde(default)]
    name: String,
    #[serde(rename = "match")]
    matcher: RawOperation,
    #[serde(default)]
    skip_validation: bool,
    #[serde(default)]
    issuers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    from: Vec<RawFrom>,
    #[serde(default)]
    to: Vec<RawTo>,
    #[serde(default)]
    when: Vec<RawCondition>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrom {
    source: RawSource,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSource {
    #[serde(default)]
    request_principals: Vec<String>,
    #[serde(default)]
    not_request_principals: Vec<String>,
    #[serde(default)]
    ip_blocks: Vec<String>,
    #[serde(default)]
    not_ip_blocks: Vec<String>,
    #[serde(default)]
    remote_ip_blocks: Vec<String>,
    #[serde(default)]
    not_remote_ip_blocks: Vec<String>,
    // Istio fields for the mTLS peer: named so the error can say why they are refused.
    principals: Option<serde_json::Value>,
    not_principals: Option<serde_json::Value>,
    namespaces: Option<serde_json::Value>,
    not_namespaces: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTo {
    operation: RawOperation,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawOperation {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    not_hosts: Vec<String>,
    #[serde(default)]
    ports: Vec<RawPort>,
    #[serde(default)]
    not_ports: Vec<RawPort>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    not_paths: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    not_methods: Vec<String>,
}

/// Istio writes ports as strings (`"8080"`); a JSON number means the same and is accepted.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCondition {
    key: String,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    not_values: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Parsing and compilation.

impl Config {
    /// Parses, validates and compiles a plugin configuration. An empty configuration is an error:
    /// a filter that checks nothing is almost certainly a deployment mistake.
    pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::new("", "the plugin configuration is empty"));
        }
        let parse_path = config_json::Path::default();
        let document = config_json::parse_strict(json, &parse_path)
            .map_err(|err| ConfigError::new(parse_path.render(), err.to_string()))?;
        let path = config_json::Path::default();
        let raw: RawConfig =
            config_json::read(&document, &path).map_err(|err| ConfigError::new(path.render(), err.to_string()))?;
        if raw.jwt_rules.is_empty() && raw.policies.is_empty() {
            return Err(ConfigError::new("", "neither jwtRules nor policies are given"));
        }
        compile(raw)
    }
}

fn compile(raw: RawConfig) -> Result<Config, ConfigError> {
    let limits = compile_limits(raw.limits.as_ref())?;
    let mut token_locations: Vec<TokenLocation> = Vec::new();
    let mut providers = Vec::with_capacity(raw.jwt_rules.len());
    let mut output_headers: Vec<String> = Vec::new();
    for (index, rule) in raw.jwt_rules.into_iter().enumerate() {
        let field = format!("jwtRules[{index}]");
        let provider = compile_provider(rule, &field, &mut token_locations, &limits)?;
        if providers.iter().any(|p: &Provider| p.issuer == provider.issuer) {
            return Err(ConfigError::new(
                format!("{field}.issuer"),
                format!("issuer {:?} is configured twice", provider.issuer),
            ));
        }
        output_headers.extend(provider.output_payload_to_header.iter().cloned());
        output_headers.extend(provider.output_claim_to_headers.iter().map(|c| c.header.clone()));
        providers.push(provider);
    }
    output_headers.sort();
    output_headers.dedup();

    let policies = compile_policies(raw.policies, raw.space_delimited_claims)?;
    let token_requirements = compile_token_requirements(raw.token_requirements, &providers)?;
    let unsafe_paths = match raw.unsafe_paths.as_deref() {
        None | Some("REJECT") => UnsafePathAction::Reject,
        Some("DENY") => UnsafePathAction::Deny,
        Some(other) => {
            return Err(ConfigError::new("unsafePaths", format!("{other:?}: expected REJECT (400) or DENY (403)")))
        }
    };
    Ok(Config {
        connection_reads: ConnectionReads::of(&policies, &token_requirements),
        providers,
        token_locations,
        policies,
        output_headers,
        token_requirements,
        num_trusted_proxies: raw.num_trusted_proxies,
        unsafe_paths,
        limits,
    })
}

/// Each limit must lie in a range where it still protects: a token limit above Envoy's largest
/// header size or a depth beyond serde_json's own recursion limit (128) would be a silent no-op.
fn compile_limits(raw: Option<&RawLimits>) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let Some(raw) = raw else { return Ok(defaults) };
    let bounded = |value: Option<u64>, name: &str, min: u64, max: u64, default: usize| match value {
        None => Ok(default),
        Some(v) if (min..=max).contains(&v) => usize::try_from(v)
            .map_err(|_| ConfigError::new(format!("limits.{name}"), format!("{v} does not fit this platform"))),
        Some(v) => Err(ConfigError::new(format!("limits.{name}"), format!("{v} is outside {min}..={max}"))),
    };
    Ok(Limits {
        token: TokenLimits {
            max_token_bytes: bounded(
                raw.max_token_bytes,
                "maxTokenBytes",
                256,
                1 << 20,
                defaults.token.max_token_bytes,
            )?,
            max_json_depth: bounded(raw.max_claim_depth, "maxClaimDepth", 2, 64, defaults.token.max_json_depth)?,
        },
        max_jwks_bytes: bounded(raw.max_jwks_bytes, "maxJwksBytes", 1024, 16 << 20, defaults.max_jwks_bytes)?,
    })
}

fn compile_provider(
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
    let timeout_ms = duration_field(&rule.timeout, &format!("{field}.timeout"), DEFAULT_FETCH_TIMEOUT_MS, 1, HOUR_MS)?;
    let cache_duration_ms = duration_field(
        &rule.cache_duration,
        &format!("{field}.cacheDuration"),
        DEFAULT_CACHE_DURATION_MS,
        SECOND_MS,
        DAY_MS,
    )?;
    let stale_if_error_ms = duration_field(
        &rule.stale_if_error,
        &format!("{field}.staleIfError"),
        DEFAULT_STALE_IF_ERROR_MS,
        0,
        7 * DAY_MS,
    )?;
    let unknown_kid_refetch_interval_ms = duration_field(
        &rule.unknown_kid_refetch_interval,
        &format!("{field}.unknownKidRefetchInterval"),
        DEFAULT_UNKNOWN_KID_REFETCH_INTERVAL_MS,
        SECOND_MS,
        HOUR_MS,
    )?;
    let keys = match (&rule.jwks, &rule.jwks_uri) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                format!("{field}.jwks"),
                "give either jwks (inline keys) or jwksUri, not both",
            ))
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
            KeySource::Inline(parsed.key_set)
        }
        (None, jwks_uri) => {
            // Without jwksUri the issuer's OIDC discovery document names the key set.
            let (uri, uri_field, discovery) = match jwks_uri {
                Some(uri) => (uri.clone(), format!("{field}.jwksUri"), false),
                None => {
                    let discovery_uri = format!("{}{DISCOVERY_PATH}", rule.issuer.trim_end_matches('/'));
                    if parse_http_uri(&discovery_uri).is_none() {
                        return Err(ConfigError::new(
                            format!("{field}.jwksUri"),
                            format!(
                                "required (or give the keys inline in jwks): the issuer {:?} is not an http(s) URL, \
                                 so its OIDC discovery document cannot be read",
                                rule.issuer
                            ),
                        ));
                    }
                    (discovery_uri, format!("{field}.issuer"), true)
                }
            };
            let target = parse_http_uri(&uri).ok_or_else(|| {
                ConfigError::new(uri_field, format!("{uri:?} is not an absolute http:// or https:// URI"))
            })?;
            if let Some(name) = &rule.jwks_cluster {
                if name.trim().is_empty() {
                    return Err(ConfigError::new(format!("{field}.jwksCluster"), "must not be empty"));
                }
            }
            KeySource::Remote(RemoteJwks {
                cluster: target.cluster(rule.jwks_cluster.as_deref()),
                uri,
                authority: target.authority,
                path: target.path,
                discovery,
                cluster_override: rule.jwks_cluster.clone(),
                timeout_ms,
                cache_duration_ms,
                stale_if_error_ms,
                unknown_kid_refetch_interval_ms,
            })
        }
    };

    let mut locations = Vec::new();
    let explicit = !(rule.from_headers.is_empty() && rule.from_params.is_empty() && rule.from_cookies.is_empty());
    let wanted: Vec<(String, TokenLocation)> = if explicit {
        let headers = rule
            .from_headers
            .into_iter()
            .enumerate()
            .map(|(i, h)| (format!("{field}.fromHeaders[{i}].name"), TokenLocation::header(&h.name, &h.prefix)));
        let params = rule
            .from_params
            .into_iter()
            .enumerate()
            .map(|(i, p)| (format!("{field}.fromParams[{i}]"), TokenLocation::Param(p)));
        let cookies = rule
            .from_cookies
            .into_iter()
            .enumerate()
            .map(|(i, c)| (format!("{field}.fromCookies[{i}]"), TokenLocation::Cookie(c)));
        headers.chain(params).chain(cookies).collect()
    } else {
        // Istio's defaults: the Authorization bearer token, then the access_token parameter.
        vec![
            (field.to_string(), TokenLocation::header("Authorization", "Bearer ")),
            (field.to_string(), TokenLocation::Param("access_token".to_string())),
        ]
    };
    for (location_field, location) in wanted {
        if location.name().trim().is_empty() {
            return Err(ConfigError::new(location_field, "must not be empty"));
        }
        let index = match token_locations.iter().position(|known| *known == location) {
            Some(index) => index,
            None => {
                token_locations.push(location);
                token_locations.len() - 1
            }
        };
        if !locations.contains(&index) {
            locations.push(index);
        }
    }

    let output_payload_to_header = match rule.output_payload_to_header {
        Some(header) => Some(validate_header_name(&header, &format!("{field}.outputPayloadToHeader"))?),
        None => None,
    };
    let mut output_claim_to_headers = Vec::new();
    for (i, output) in rule.output_claim_to_headers.into_iter().enumerate() {
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
        locations,
        forward_original_token: rule.forward_original_token,
        output_payload_to_header,
        output_claim_to_headers,
    })
}

fn validate_header_name(name: &str, field: &str) -> Result<String, ConfigError> {
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
    if !valid {
        return Err(ConfigError::new(field, format!("{name:?} is not a valid HTTP header name")));
    }
    Ok(name.to_ascii_lowercase())
}

fn compile_policies(raw: Vec<RawPolicy>, extra_space_delimited: Vec<String>) -> Result<Policies, ConfigError> {
    let mut policies = Policies::default();
    for (index, policy) in raw.into_iter().enumerate() {
        let field = format!("policies[{index}]");
        let action = policy.action.as_deref().unwrap_or("ALLOW");
        let name = if policy.name.is_empty() { field.clone() } else { policy.name };
        let rules = compile_rules(policy.rules, &field)?;
        let compiled = Policy { name, rules, dry_run: policy.dry_run };
        match action {
            "ALLOW" => policies.allow.push(compiled),
            "DENY" => policies.deny.push(compiled),
            "AUDIT" if policy.dry_run => {
                return Err(ConfigError::new(
                    format!("{field}.dryRun"),
                    "an AUDIT policy changes no decision already; dryRun is for ALLOW and DENY",
                ))
            }
            "AUDIT" => policies.audit.push(compiled),
            "CUSTOM" => {
                return Err(ConfigError::new(
                    format!("{field}.action"),
                    "CUSTOM (external authorization) is not supported: expected ALLOW, DENY or AUDIT",
                ))
            }
            other => {
                return Err(ConfigError::new(
                    format!("{field}.action"),
                    format!("unsupported action {other:?}: expected ALLOW, DENY or AUDIT"),
                ))
            }
        }
    }
    let mut claims: Vec<String> = DEFAULT_SPACE_DELIMITED_CLAIMS.iter().map(|c| c.to_string()).collect();
    for (i, claim) in non_empty(extra_space_delimited, "spaceDelimitedClaims")?.into_iter().enumerate() {
        if claim.contains(['[', ']']) {
            return Err(ConfigError::new(
                format!("spaceDelimitedClaims[{i}]"),
                format!("{claim:?}: give the claim's name (the innermost one for nested claims)"),
            ));
        }
        if !claims.contains(&claim) {
            claims.push(claim);
        }
    }
    policies.space_delimited_claims = claims;
    Ok(policies)
}

fn compile_rules(raw_rules: Vec<RawRule>, field: &str) -> Result<Vec<Rule>, ConfigError> {
    let mut rules = Vec::with_capacity(raw_rules.len());
    for (r, rule) in raw_rules.into_iter().enumerate() {
        let rule_field = format!("{field}.rules[{r}]");
        let mut from = Vec::new();
        for (s, raw) in rule.from.into_iter().enumerate() {
            from.push(compile_source(raw.source, &format!("{rule_field}.from[{s}].source"))?);
        }
        let mut to = Vec::new();
        for (o, raw) in rule.to.into_iter().enumerate() {
            to.push(compile_operation(raw.operation, &format!("{rule_field}.to[{o}].operation"))?);
        }
        let mut when = Vec::new();
        for (c, raw) in rule.when.into_iter().enumerate() {
            let f = format!("{rule_field}.when[{c}]");
            let key = ConditionKey::parse(&raw.key).map_err(|reason| ConfigError::new(format!("{f}.key"), reason))?;
            if raw.values.is_empty() && raw.not_values.is_empty() {
                return Err(ConfigError::new(f, "at least one of values or notValues is required"));
            }
            let kind = key.value_kind();
            when.push(Condition {
                key,
                values: value_matches(raw.values, kind, &format!("{f}.values"))?,
                not_values: value_matches(raw.not_values, kind, &format!("{f}.notValues"))?,
            });
        }
        rules.push(Rule { from, to, when });
    }
    Ok(rules)
}

fn compile_source(raw: RawSource, field: &str) -> Result<Source, ConfigError> {
    for (name, value) in [
        ("principals", &raw.principals),
        ("notPrincipals", &raw.not_principals),
        ("namespaces", &raw.namespaces),
        ("notNamespaces", &raw.not_namespaces),
    ] {
        if value.is_some() {
            return Err(ConfigError::new(
                format!("{field}.{name}"),
                "peer (mTLS) identities are not visible to this filter: use requestPrincipals for JWT identities",
            ));
        }
    }
    Ok(Source {
        request_principals: principal_matches(raw.request_principals, &format!("{field}.requestPrincipals"))?,
        not_request_principals: principal_matches(
            raw.not_request_principals,
            &format!("{field}.notRequestPrincipals"),
        )?,
        ip_blocks: cidrs(raw.ip_blocks, &format!("{field}.ipBlocks"))?,
        not_ip_blocks: cidrs(raw.not_ip_blocks, &format!("{field}.notIpBlocks"))?,
        remote_ip_blocks: cidrs(raw.remote_ip_blocks, &format!("{field}.remoteIpBlocks"))?,
        not_remote_ip_blocks: cidrs(raw.not_remote_ip_blocks, &format!("{field}.notRemoteIpBlocks"))?,
    })
}

fn compile_operation(raw: RawOperation, field: &str) -> Result<Operation, ConfigError> {
    let hosts = |values: Vec<String>, f: &str| -> Result<Vec<HostMatch>, ConfigError> {
        Ok(checked_strings(values, f)?.iter().map(|v| HostMatch::parse(v)).collect())
    };
    Ok(Operation {
        hosts: hosts(raw.hosts, &format!("{field}.hosts"))?,
        not_hosts: hosts(raw.not_hosts, &format!("{field}.notHosts"))?,
        ports: ports(raw.ports, &format!("{field}.ports"))?,
        not_ports: ports(raw.not_ports, &format!("{field}.notPorts"))?,
        methods: string_matches(raw.methods, &format!("{field}.methods"))?,
        not_methods: string_matches(raw.not_methods, &format!("{field}.notMethods"))?,
        paths: path_matches(raw.paths, &format!("{field}.paths"))?,
        not_paths: path_matches(raw.not_paths, &format!("{field}.notPaths"))?,
    })
}

fn compile_token_requirements(
    raw: Vec<RawTokenRequirement>,
    providers: &[Provider],
) -> Result<Vec<TokenRequirement>, ConfigError> {
    let mut requirements = Vec::with_capacity(raw.len());
    for (index, requirement) in raw.into_iter().enumerate() {
        let field = format!("tokenRequirements[{index}]");
        let matcher = compile_operation(requirement.matcher, &format!("{field}.match"))?;
        let action = match (requirement.skip_validation, requirement.issuers.is_empty()) {
            (true, true) => RequirementAction::SkipValidation,
            (false, false) => {
                let mut indices = Vec::new();
                for (i, issuer) in requirement.issuers.iter().enumerate() {
                    let issuer_field = format!("{field}.issuers[{i}]");
                    if issuer.trim().is_empty() {
                        return Err(ConfigError::new(issuer_field, "must not be empty"));
                    }
                    let position = providers.iter().position(|p| &p.issuer == issuer).ok_or_else(|| {
                        ConfigError::new(&issuer_field, format!("{issuer:?} is not the issuer of any jwtRules entry"))
                    })?;
                    if !indices.contains(&position) {
                        indices.push(position);
                    }
                }
                RequirementAction::RequireIssuers(indices)
            }
            (true, false) => {
                return Err(ConfigError::new(
                    format!("{field}.issuers"),
                    "a requirement either skips validation or requires issuers, not both",
                ))
            }
            (false, true) => {
                return Err(ConfigError::new(
                    field,
                    "give skipValidation: true (no token needed) or issuers (a token from one of them is required)",
                ))
            }
        };
        let name = if requirement.name.is_empty() { field } else { requirement.name };
        requirements.push(TokenRequirement { name, matcher, action });
    }
    Ok(requirements)
}

fn non_empty(values: Vec<String>, field: &str) -> Result<Vec<String>, ConfigError> {
    for (i, value) in values.iter().enumerate() {
        if value.is_empty() {
            return Err(ConfigError::new(format!("{field}[{i}]"), "must not be empty"));
        }
    }
    Ok(values)
}

/// Non-empty values where `*` is the whole value, or only at the start or only at the end: Istio
/// would read `*a*` as a suffix `a*` with a literal star, which nobody means.
fn checked_strings(values: Vec<String>, field: &str) -> Result<Vec<String>, ConfigError> {
    let values = non_empty(values, field)?;
    for (i, value) in values.iter().enumerate() {
        if value == "*" {
            continue;
        }
        let inner = value.get(1..value.len().saturating_sub(1)).unwrap_or_default();
        if inner.contains('*') || (value.len() > 1 && value.starts_with('*') && value.ends_with('*')) {
            return Err(ConfigError::new(
                format!("{field}[{i}]"),
                format!("{value:?}: `*` is only allowed as a whole value, a prefix (`*.html`) or a suffix (`/api/*`)"),
            ));
        }
    }
    Ok(values)
}

fn string_matches(values: Vec<String>, field: &str) -> Result<Vec<StringMatch>, ConfigError> {
    checked_strings(values, field).map(|values| values.iter().map(|v| StringMatch::parse(v)).collect())
}

fn principal_matches(values: Vec<String>, field: &str) -> Result<Vec<PrincipalMatch>, ConfigError> {
    let values = checked_strings(values, field)?;
    for (i, value) in values.iter().enumerate() {
        if value.starts_with('/') {
            return Err(ConfigError::new(
                format!("{field}[{i}]"),
                format!("{value:?}: the issuer (before the last /) is empty; write <iss>/<sub>, <iss>/* or */<sub>"),
            ));
        }
    }
    Ok(values.iter().map(|v| PrincipalMatch::parse(v)).collect())
}

fn path_matches(values: Vec<String>, field: &str) -> Result<Vec<PathMatch>, ConfigError> {
    let values = non_empty(values, field)?;
    let mut matches = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let value_field = format!("{field}[{i}]");
        if PathTemplate::is_template(value) {
            let template = PathTemplate::parse(value)
                .map_err(|reason| ConfigError::new(&value_field, format!("{value:?}: {reason}")))?;
            matches.push(PathMatch::Template(template));
        } else {
            let checked = checked_strings(vec![value.clone()], field)
                .map_err(|err| ConfigError::new(&value_field, err.reason))?;
            matches.extend(checked.iter().map(|v| PathMatch::String(StringMatch::parse(v))));
        }
    }
    Ok(matches)
}

fn cidrs(values: Vec<String>, field: &str) -> Result<Vec<Cidr>, ConfigError> {
    values
        .iter()
        .enumerate()
        .map(|(i, value)| Cidr::parse(value).map_err(|reason| ConfigError::new(format!("{field}[{i}]"), reason)))
        .collect()
}

fn ports(values: Vec<RawPort>, field: &str) -> Result<Vec<u16>, ConfigError> {
    values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let port = match value {
                RawPort::Number(n) => u16::try_from(*n).ok(),
                RawPort::Text(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
                    text.parse().ok()
                }
                RawPort::Text(_) => None,
            };
            port.ok_or_else(|| {
                let shown = match value {
                    RawPort::Number(n) => n.to_string(),
                    RawPort::Text(text) => format!("{text:?}"),
                };
                ConfigError::new(format!("{field}[{i}]"), format!("{shown} is not a port number (0-65535)"))
            })
        })
        .collect()
}

fn value_matches(values: Vec<String>, kind: ValueKind, field: &str) -> Result<Vec<ValueMatch>, ConfigError> {
    Ok(match kind {
        ValueKind::String => string_matches(values, field)?.into_iter().map(ValueMatch::String).collect(),
        ValueKind::Principal => principal_matches(values, field)?.into_iter().map(ValueMatch::Principal).collect(),
        ValueKind::Address => cidrs(values, field)?.into_iter().map(ValueMatch::Address).collect(),
        ValueKind::Port => {
            ports(values.into_iter().map(RawPort::Text).collect(), field)?.into_iter().map(ValueMatch::Port).collect()
        }
    })
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
        ConfigError::new(field, format!("{text:?} is not a duration such as \"5s\", \"500ms\", \"2m\" or \"1h\""))
    })?;
    if ms < min_ms {
        let least = if min_ms == 1 { "positive".to_string() } else { format!("at least {}", describe_ms(min_ms)) };
        return Err(ConfigError::new(field, format!("{text:?} is too short: must be {least}")));
    }
    if ms > max_ms {
        return Err(ConfigError::new(field, format!("{text:?} is too long: at most {}", describe_ms(max_ms))));
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

/// Parses Istio/protobuf duration strings: `5s`, `1.5s`, `500ms`, `2m`, `1h`.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        return None;
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let ms = value * unit_ms;
    (ms.is_finite() && ms < 1e12).then_some(ms as u64)
}

fn parse_http_uri(uri: &str) -> Option<HttpTarget> {
    let (rest, default_port) = if let Some(rest) = uri.strip_prefix("https://") {
        (rest, 443)
    } else if let Some(rest) = uri.strip_prefix("http://") {
        (rest, 80)
    } else {
        return None;
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => (rest.get(..slash)?, rest.get(slash..)?),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') || path.contains('#') {
        return None;
    }
    let (host, port_text) = if let Some(bracketed) = authority.strip_prefix('[') {
        // IPv6 literal: `[::1]` or `[::1]:8080`; Istio keeps the brackets out of cluster names.
        let (host, after) = bracketed.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port_text {
        Some(text) => text.parse::<u16>().ok()?,
        None => default_port,
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    Some(HttpTarget { host: host.to_string(), port, authority: authority.to_string(), path: path.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error(config: serde_json::Value) -> ConfigError {
        Config::parse(config.to_string().as_bytes()).expect_err("config must be refused")
    }

    #[test]
    fn connection_attributes_are_read_only_where_a_rule_needs_them() {
        let reads = |policies: serde_json::Value, requirements: serde_json::Value| {
            let config = json!({"policies": policies, "tokenRequirements": requirements});
            Config::parse(config.to_string().as_bytes()).expect("valid").connection_reads
        };
        let neither = ConnectionReads::default();
        let port = ConnectionReads { destination_port: true, source_address: false };
        let address = ConnectionReads { destination_port: false, source_address: true };
        let rule = |rule: serde_json::Value| json!([{"rules": [rule]}]);
        let when = |key: &str, value: &str| rule(json!({"when": [{"key": key, "values": [value]}]}));
        let cases = [
            (json!([{"rules": [{}]}]), json!([]), neither),
            (
                rule(json!({"to": [{"operation": {"paths": ["/a"], "hosts": ["x"], "methods": ["GET"]}}]})),
                json!([]),
                neither,
            ),
            (when("request.headers[x]", "1"), json!([]), neither),
            (rule(json!({"to": [{"operation": {"ports": ["8080"]}}]})), json!([]), port),
            (rule(json!({"to": [{"operation": {"notPorts": ["15000"]}}]})), json!([]), port),
            (when("destination.port", "8080"), json!([]), port),
            (json!([{"rules": [{}]}]), json!([{"match": {"ports": ["8443"]}, "skipValidation": true}]), port),
            (rule(json!({"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]})), json!([]), address),
            (rule(json!({"from": [{"source": {"notRemoteIpBlocks": ["10.0.0.0/8"]}}]})), json!([]), address),
            (when("source.ip", "10.0.0.1"), json!([]), address),
            (when("remote.ip", "10.0.0.1"), json!([]), address),
            (
                json!([{"action": "AUDIT", "rules": [{"from": [{"source": {"remoteIpBlocks": ["1.2.3.4"]}}],
                                                      "to": [{"operation": {"ports": ["80"]}}]}]}]),
                json!([]),
                ConnectionReads { destination_port: true, source_address: true },
            ),
        ];
        for (policies, requirements, expected) in cases {
            assert_eq!(reads(policies.clone(), requirements.clone()), expected, "{policies} {requirements}");
        }
    }

    #[test]
    fn the_issue_example_compiles_with_istio_defaults() {
        let config = Config::parse(include_bytes!("../examples/envoy/plugin-config.json")).expect("valid");
        let provider = &config.providers[0];
        assert_eq!(provider.audiences, vec!["shop".to_string()]);
        assert!(!provider.forward_original_token);
        assert_eq!(provider.locations, vec![0, 1]);
        assert_eq!(
            config.token_locations,
            vec![TokenLocation::header("Authorization", "Bearer "), TokenLocation::Param("access_token".into()),]
        );
        assert_eq!(config.output_headers, vec!["x-jwt-payload".to_string(), "x-user".to_string()]);
        assert_eq!((config.policies.deny.len(), config.policies.allow.len()), (1, 1));
        let KeySource::Remote(remote) = &provider.keys else { panic!("remote keys") };
        assert_eq!(remote.cluster, "keycloak");
        assert_eq!(remote.authority, "127.0.0.1:8180");
        assert_eq!(remote.path, "/realms/shop/protocol/openid-connect/certs");
        assert_eq!(remote.timeout_ms, DEFAULT_FETCH_TIMEOUT_MS);
    }

    #[test]
    fn default_cluster_is_istios_outbound_name() {
        for (uri, cluster, authority) in [
            ("https://idp.example/realms/a/certs", "outbound|443||idp.example", "idp.example"),
            (
                "http://keycloak.auth.svc.cluster.local:8080/c",
                "outbound|8080||keycloak.auth.svc.cluster.local",
                "keycloak.auth.svc.cluster.local:8080",
            ),
            ("http://[::1]:9000/c", "outbound|9000||::1", "[::1]:9000"),
        ] {
            let config = Config::parse(json!({"jwtRules": [{"issuer": "i", "jwksUri": uri}]}).to_string().as_bytes())
                .expect(uri);
            let KeySource::Remote(remote) = &config.providers[0].keys else { panic!("remote") };
            assert_eq!((remote.cluster.as_str(), remote.authority.as_str()), (cluster, authority));
        }
    }

    #[test]
    fn cache_settings_default_and_parse() {
        let parse = |rule: serde_json::Value| {
            let config = Config::parse(json!({"jwtRules": [rule]}).to_string().as_bytes()).expect("valid");
            let KeySource::Remote(remote) = &config.providers[0].keys else { panic!("remote") };
            remote.clone()
        };
        let defaults = parse(json!({"issuer": "i", "jwksUri": "http://x/c"}));
        assert_eq!(
            (defaults.cache_duration_ms, defaults.stale_if_error_ms, defaults.unknown_kid_refetch_interval_ms),
            (DEFAULT_CACHE_DURATION_MS, DEFAULT_STALE_IF_ERROR_MS, DEFAULT_UNKNOWN_KID_REFETCH_INTERVAL_MS)
        );
        assert_eq!((defaults.discovery, defaults.cluster_override), (false, None));
        let given = parse(json!({"issuer": "i", "jwksUri": "http://x/c", "cacheDuration": "1s",
                                 "staleIfError": "0s", "unknownKidRefetchInterval": "2m", "timeout": "250ms"}));
        assert_eq!(
            (given.cache_duration_ms, given.stale_if_error_ms, given.unknown_kid_refetch_interval_ms, given.timeout_ms),
            (1_000, 0, 120_000, 250)
        );
    }

    #[test]
    fn without_jwks_uri_the_issuer_is_discovered() {
        for (issuer, cluster, expected_cluster, authority, path) in [
            (
                "https://idp.example/realms/shop",
                None,
                "outbound|443||idp.example",
                "idp.example",
                "/realms/shop/.well-known/openid-configuration",
            ),
            (
                "http://127.0.0.1:8180/realms/shop/",
                Some("idp"),
                "idp",
                "127.0.0.1:8180",
                "/realms/shop/.well-known/openid-configuration",
            ),
            (
                "https://accounts.example",
                None,
                "outbound|443||accounts.example",
                "accounts.example",
                "/.well-known/openid-configuration",
            ),
        ] {
            let mut rule = json!({"issuer": issuer});
            if let Some(cluster) = cluster {
                rule["jwksCluster"] = json!(cluster);
            }
            let config = Config::parse(json!({"jwtRules": [rule]}).to_string().as_bytes()).expect(issuer);
            let KeySource::Remote(remote) = &config.providers[0].keys else { panic!("remote") };
            assert!(remote.discovery);
            assert_eq!(remote.uri, format!("{}{DISCOVERY_PATH}", issuer.trim_end_matches('/')));
            assert_eq!(
                (remote.cluster.as_str(), remote.authority.as_str(), remote.path.as_str()),
                (expected_cluster, authority, path)
            );
            assert_eq!(remote.cluster_override.as_deref(), cluster);
        }
    }

    #[test]
    fn explicit_locations_replace_the_defaults_and_are_shared() {
        let config = Config::parse(json!({"jwtRules": [
            {"issuer": "a", "jwksUri": "http://a/c", "fromCookies": ["session"], "fromHeaders": [{"name": "X-Token"}]},
            {"issuer": "b", "jwksUri": "http://b/c", "fromHeaders": [{"name": "x-token", "prefix": ""}]}
        ]}).to_string().as_bytes()).expect("valid");
        assert_eq!(
            config.token_locations,
            vec![TokenLocation::header("x-token", ""), TokenLocation::Cookie("session".into())]
        );
        assert_eq!(config.providers[0].locations, vec![0, 1]);
        assert_eq!(config.providers[1].locations, vec![0]);
    }

    #[test]
    fn errors_name_the_field_and_the_reason() {
        let cases = [
            (
                json!({"jwtRules": [{"issuer": "", "jwksUri": "http://x/certs"}]}),
                "jwtRules[0].issuer",
                "must not be empty",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "bogus": 1}]}),
                "jwtRules[0].bogus",
                "unknown field `bogus`",
            ),
            (json!({"jwtRules": [{"issuer": "i"}]}), "jwtRules[0].jwksUri", "required"),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "ftp://x/c"}]}),
                "jwtRules[0].jwksUri",
                "not an absolute http",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "jwks": "{}"}]}),
                "jwtRules[0].jwks",
                "not both",
            ),
            (json!({"jwtRules": [{"issuer": "i", "jwks": "{\"keys\": []}"}]}), "jwtRules[0].jwks", "no keys"),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "timeout": "soon"}]}),
                "jwtRules[0].timeout",
                "not a duration such as",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "timeout": "0s"}]}),
                "jwtRules[0].timeout",
                "must be positive",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "cacheDuration": "500ms"}]}),
                "jwtRules[0].cacheDuration",
                "too short: must be at least 1s",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "cacheDuration": "25h"}]}),
                "jwtRules[0].cacheDuration",
                "too long: at most 24h",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "cacheDuration": 300}]}),
                "jwtRules[0].cacheDuration",
                "invalid type",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "staleIfError": "169h"}]}),
                "jwtRules[0].staleIfError",
                "too long: at most 168h",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "staleIfError": "-1s"}]}),
                "jwtRules[0].staleIfError",
                "not a duration",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "unknownKidRefetchInterval": "100ms"}]}),
                "jwtRules[0].unknownKidRefetchInterval",
                "at least 1s",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwks": "{}", "cacheDuration": "1m"}]}),
                "jwtRules[0].cacheDuration",
                "not with inline jwks",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwks": "{}", "jwksCluster": "c"}]}),
                "jwtRules[0].jwksCluster",
                "not with inline jwks",
            ),
            (
                json!({"jwtRules": [{"issuer": "https://idp.example/realms/a", "jwksCluster": " "}]}),
                "jwtRules[0].jwksCluster",
                "must not be empty",
            ),
            (
                json!({"jwtRules": [{"issuer": "https://idp example/realms/a"}]}),
                "jwtRules[0].jwksUri",
                "is not an http(s) URL, so its OIDC discovery document cannot be read",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "audiences": ["a", ""]}]}),
                "jwtRules[0].audiences[1]",
                "must not be empty",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "outputClaimToHeaders": [{"header": "bad header", "claim": "sub"}]}]}),
                "jwtRules[0].outputClaimToHeaders[0].header",
                "not a valid HTTP header name",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c"}, {"issuer": "i", "jwksUri": "http://y/c"}]}),
                "jwtRules[1].issuer",
                "configured twice",
            ),
            (json!({"jwtRules": [{"issuer": 5, "jwksUri": "http://x/c"}]}), "jwtRules[0].issuer", "invalid type"),
            (
                json!({"policies": [{"name": "p", "action": "MAYBE"}]}),
                "policies[0].action",
                "expected ALLOW, DENY or AUDIT",
            ),
            (json!({"policies": [{"action": "CUSTOM"}]}), "policies[0].action", "CUSTOM (external authorization)"),
            (json!({"policies": [{"action": "AUDIT", "dryRun": true}]}), "policies[0].dryRun", "AUDIT"),
            (json!({"policies": [{"dryRun": "yes"}]}), "policies[0].dryRun", "invalid type"),
            (json!({"policies": [{"rules": [{"bogus": 1}]}]}), "policies[0].rules[0].bogus", "unknown field `bogus`"),
            (
                json!({"policies": [{"rules": [{"to": [{"operation": {"paths": ["/a/*/b"]}}]}]}]}),
                "policies[0].rules[0].to[0].operation.paths[0]",
                "only allowed",
            ),
            (
                json!({"policies": [{"rules": [{"to": [{"operation": {"paths": ["*a*"]}}]}]}]}),
                "policies[0].rules[0].to[0].operation.paths[0]",
                "only allowed",
            ),
            (
                json!({"policies": [{"rules": [{"to": [{"operation": {"paths": ["/ok", "/a/{id}"]}}]}]}]}),
                "policies[0].rules[0].to[0].operation.paths[1]",
                "only {*} and {**} are supported",
            ),
            (
                json!({"policies": [{"rules": [{"to": [{"operation": {"notPaths": ["/a/{**}/{*}"]}}]}]}]}),
                "policies[0].rules[0].to[0].operation.notPaths[0]",
                "{**} must be the last operator",
            ),
            (
                json!({"policies": [{"rules": [{"to": [{"operation": {"paths": ["/a/{*"]}}]}]}]}),
                "policies[0].rules[0].to[0].operation.paths[0]",
                "not allowed in a path template",
            ),
            (
                json!({"policies": [{"rules": [{"to": [{"operation": {"hosts": ["*.a.*"]}}]}]}]}),
                "policies[0].rules[0].to[0].operation.hosts[0]",
                "only allowed",
            ),
            (
                json!({"policies": [{"rules": [{"to": [{"operation": {"notHosts": [""]}}]}]}]}),
                "policies[0].rules[0].to[0].operation.notHosts[0]",
                "must not be empty",
            ),
            (
                json!({"policies": [{"rules": [{"to": [{"operation": {"ports": ["80", "http"]}}]}]}]}),
                "policies[0].rules[0].to[0].operation.ports[1]",
                "\"http\" is not a port number",
            ),
            (
                json!({"policies": [{"rules": [{"to": [{"operation": {"notPorts": [70000]}}]}]}]}),
                "policies[0].rules[0].to[0].operation.notPorts[0]",
                "70000 is not a port number",
            ),
            (
                json!({"policies": [{"rules": [{"to": [{"operation": {"methods": ["G*T"]}}]}]}]}),
                "policies[0].rules[0].to[0].operation.methods[0]",
                "only allowed",
            ),
            (
                json!({"policies": [{"rules": [{"to": [{"operation": {"hostz": ["a"]}}]}]}]}),
                "policies[0].rules[0].to[0].operation.hostz",
                "unknown field `hostz`",
            ),
            (
                json!({"policies": [{"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8", "10.0.0.0/40"]}}]}]}]}),
                "policies[0].rules[0].from[0].source.ipBlocks[1]",
                "prefix length",
            ),
            (
                json!({"policies": [{"rules": [{"from": [{"source": {"notRemoteIpBlocks": ["office"]}}]}]}]}),
                "policies[0].rules[0].from[0].source.notRemoteIpBlocks[0]",
                "not an IP address or CIDR block",
            ),
            (
                json!({"policies": [{"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"]}}]}]}]}),
                "policies[0].rules[0].from[0].source.principals",
                "mTLS",
            ),
            (
                json!({"policies": [{"rules": [{"from": [{"source": {"namespaces": ["a"]}}]}]}]}),
                "policies[0].rules[0].from[0].source.namespaces",
                "mTLS",
            ),
            (
                json!({"policies": [{"rules": [{"from": [{"source": {"requestPrincipals": ["/alice"]}}]}]}]}),
                "policies[0].rules[0].from[0].source.requestPrincipals[0]",
                "the issuer (before the last /) is empty",
            ),
            (
                json!({"policies": [{"rules": [{"from": [{"source": {"notRequestPrincipals": ["a*b/c"]}}]}]}]}),
                "policies[0].rules[0].from[0].source.notRequestPrincipals[0]",
                "only allowed",
            ),
            (
                json!({"policies": [{"rules": [{"when": [{"key": "source.principal", "values": ["x"]}]}]}]}),
                "policies[0].rules[0].when[0].key",
                "mTLS peer identity",
            ),
            (
                json!({"policies": [{"rules": [{"when": [{"key": "request.auth.claim[a]", "values": ["x"]}]}]}]}),
                "policies[0].rules[0].when[0].key",
                "unsupported key",
            ),
            (
                json!({"policies": [{"rules": [{"when": [{"key": "remote.ip", "values": ["1.2.3.4", "1.2.3"]}]}]}]}),
                "policies[0].rules[0].when[0].values[1]",
                "not an IP address",
            ),
            (
                json!({"policies": [{"rules": [{"when": [{"key": "source.ip", "notValues": ["::/200"]}]}]}]}),
                "policies[0].rules[0].when[0].notValues[0]",
                "prefix length",
            ),
            (
                json!({"policies": [{"rules": [{"when": [{"key": "destination.port", "values": ["https"]}]}]}]}),
                "policies[0].rules[0].when[0].values[0]",
                "not a port number",
            ),
            (
                json!({"policies": [{"rules": [{"when": [{"key": "request.auth.principal", "values": ["/sub"]}]}]}]}),
                "policies[0].rules[0].when[0].values[0]",
                "issuer",
            ),
            (
                json!({"policies": [{"rules": [{"when": [{"key": "request.headers[]", "values": ["x"]}]}]}]}),
                "policies[0].rules[0].when[0].key",
                "expected request.headers[name]",
            ),
            (json!({"policies": [], "numTrustedProxies": -1}), "numTrustedProxies", "invalid value"),
            (
                json!({"policies": [{"action": "DENY"}], "unsafePaths": "ALLOW"}),
                "unsafePaths",
                "expected REJECT (400) or DENY (403)",
            ),
            (
                json!({"policies": [{"action": "DENY"}], "spaceDelimitedClaims": ["roles", ""]}),
                "spaceDelimitedClaims[1]",
                "must not be empty",
            ),
            (
                json!({"policies": [{"action": "DENY"}], "spaceDelimitedClaims": ["a[b]"]}),
                "spaceDelimitedClaims[0]",
                "innermost",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c"}],
                       "tokenRequirements": [{"match": {"paths": ["/a"]}, "issuers": ["i", "j"]}]}),
                "tokenRequirements[0].issuers[1]",
                "\"j\" is not the issuer of any jwtRules entry",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c"}],
                       "tokenRequirements": [{"match": {"paths": ["/a"]}, "issuers": [""]}]}),
                "tokenRequirements[0].issuers[0]",
                "must not be empty",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c"}],
                       "tokenRequirements": [{"match": {"paths": ["/a"]}}]}),
                "tokenRequirements[0]",
                "give skipValidation: true",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c"}],
                       "tokenRequirements": [{"match": {"paths": ["/a"]}, "skipValidation": true, "issuers": ["i"]}]}),
                "tokenRequirements[0].issuers",
                "not both",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c"}],
                       "tokenRequirements": [{"match": {"paths": ["/a/{x}"]}, "skipValidation": true}]}),
                "tokenRequirements[0].match.paths[0]",
                "only {*} and {**}",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c"}],
                       "tokenRequirements": [{"skipValidation": true}]}),
                "tokenRequirements[0]",
                "missing field `match`",
            ),
            (
                json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c"}],
                       "tokenRequirements": [{"match": {}, "skip": true}]}),
                "tokenRequirements[0].skip",
                "unknown field `skip`",
            ),
            (
                json!({"policies": [{"rules": [{"when": [{"key": "request.auth.claims[a", "values": ["x"]}]}]}]}),
                "policies[0].rules[0].when[0].key",
                "expected request.auth.claims",
            ),
            (
                json!({"policies": [{"rules": [{"when": [{"key": "request.auth.claims[a]"}]}]}]}),
                "policies[0].rules[0].when[0]",
                "at least one of values",
            ),
            (
                json!({"policies": [{"rules": [{"from": [{"source": {"requestPrincipals": [""]}}]}]}]}),
                "policies[0].rules[0].from[0].source.requestPrincipals[0]",
                "must not be empty",
            ),
            (json!({}), "", "neither jwtRules nor policies"),
        ];
        for (config, field, reason) in cases {
            let err = error(config.clone());
            assert_eq!(err.field, field, "{config}: {err}");
            assert!(err.reason.contains(reason), "{config}: {err}");
            assert!(err.to_string().contains(field), "{err}");
        }
        assert_eq!(Config::parse(b"  ").unwrap_err().reason, "the plugin configuration is empty");
        let not_json = Config::parse(b"{not json").unwrap_err();
        assert_eq!(not_json.field, "");
        assert!(
            not_json.to_string().starts_with("invalid jwt-authz configuration: key must be a string"),
            "{not_json}"
        );
    }

    #[test]
    fn policy_level_settings_and_their_defaults() {
        let defaults = Config::parse(json!({"policies": [{"action": "DENY"}]}).to_string().as_bytes()).expect("valid");
        assert_eq!(defaults.num_trusted_proxies, 0);
        assert_eq!(defaults.unsafe_paths, UnsafePathAction::Reject);
        assert!(defaults.token_requirements.is_empty());
        assert_eq!(defaults.policies.space_delimited_claims, vec!["scope", "permission"]);
        let config = Config::parse(
            json!({
                "jwtRules": [{"issuer": "a", "jwksUri": "http://a/c"}, {"issuer": "b", "jwksUri": "http://b/c"}],
                "numTrustedProxies": 2,
                "unsafePaths": "DENY",
                "spaceDelimitedClaims": ["roles", "scope"],
                "tokenRequirements": [
                    {"name": "probes", "match": {"paths": ["/healthz"]}, "skipValidation": true},
                    {"match": {"paths": ["/b/{**}"]}, "issuers": ["b", "b"]}
                ],
                "policies": [
                    {"name": "d", "action": "DENY", "dryRun": true},
                    {"name": "a", "action": "AUDIT", "rules": [{}]},
                    {"action": "ALLOW", "rules": [{}]}
                ]
            })
            .to_string()
            .as_bytes(),
        )
        .expect("valid");
        assert_eq!((config.num_trusted_proxies, config.unsafe_paths), (2, UnsafePathAction::Deny));
        assert_eq!(config.policies.space_delimited_claims, vec!["scope", "permission", "roles"]);
        let names: Vec<&str> = config.token_requirements.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["probes", "tokenRequirements[1]"]);
        assert_eq!(config.token_requirements[0].action, RequirementAction::SkipValidation);
        assert_eq!(config.token_requirements[1].action, RequirementAction::RequireIssuers(vec![1]));
        let policies = &config.policies;
        assert_eq!((policies.deny.len(), policies.audit.len(), policies.allow.len()), (1, 1, 1));
        assert!(policies.deny[0].dry_run && !policies.allow[0].dry_run);
        assert_eq!(policies.allow[0].name, "policies[2]");
    }

    #[test]
    fn the_readme_policy_reference_example_compiles() {
        let readme = include_str!("../README.md");
        let section = readme.split("## Authorization policy reference").nth(1).expect("section");
        let example = section.split("```json").nth(1).and_then(|rest| rest.split("```").next()).expect("example");
        let config = Config::parse(example.as_bytes()).expect("the README example is valid");
        assert_eq!((config.policies.deny.len(), config.policies.allow.len(), config.policies.audit.len()), (2, 1, 1));
        assert_eq!(config.token_requirements.len(), 2);
        assert_eq!(config.num_trusted_proxies, 1);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("5s"), Some(5_000));
        assert_eq!(parse_duration_ms("1.5s"), Some(1_500));
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("2m"), Some(120_000));
        assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
        for bad in ["", "s", "5", "-1s", "1e3s", "5 s", "nans"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn limits_default_and_are_bounded() {
        let rule = json!({"issuer": "i", "jwksUri": "http://x/c"});
        let config = Config::parse(json!({"jwtRules": [rule]}).to_string().as_bytes()).expect("valid");
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.limits.token.max_token_bytes, crate::jwt::MAX_TOKEN_BYTES);
        let limits = json!({"maxTokenBytes": 8192, "maxClaimDepth": 6, "maxJwksBytes": 65536});
        let config =
            Config::parse(json!({"jwtRules": [rule], "limits": limits}).to_string().as_bytes()).expect("valid");
        assert_eq!(
            config.limits,
            Limits { token: TokenLimits { max_token_bytes: 8192, max_json_depth: 6 }, max_jwks_bytes: 65536 }
        );
        let partial = Config::parse(
            json!({"policies": [], "jwtRules": [rule], "limits": {"maxClaimDepth": 3}}).to_string().as_bytes(),
        )
        .expect("valid");
        assert_eq!(partial.limits.token.max_json_depth, 3);
        assert_eq!(partial.limits.max_jwks_bytes, crate::jwks::MAX_JWKS_BYTES);
        for (limits, field, reason) in [
            (json!({"maxTokenBytes": 0}), "limits.maxTokenBytes", "outside 256..=1048576"),
            (json!({"maxTokenBytes": 2_000_000}), "limits.maxTokenBytes", "outside"),
            (json!({"maxClaimDepth": 1}), "limits.maxClaimDepth", "outside 2..=64"),
            (json!({"maxClaimDepth": 1000}), "limits.maxClaimDepth", "outside"),
            (json!({"maxJwksBytes": 10}), "limits.maxJwksBytes", "outside"),
            (json!({"maxTokenBytes": -1}), "limits.maxTokenBytes", "invalid value"),
            (json!({"maxTokenBytes": "16k"}), "limits.maxTokenBytes", "invalid type"),
            (json!({"maxTokens": 1}), "limits.maxTokens", "unknown field"),
        ] {
            let err = error(json!({"jwtRules": [rule], "limits": limits}));
            assert_eq!(err.field, field, "{limits}");
            assert!(err.reason.contains(reason), "{limits}: {}", err.reason);
        }
    }

    #[test]
    fn inline_jwks_obeys_the_jwks_size_limit() {
        let key = json!({"keys": [crate::testkeys::jwk(crate::testkeys::key(0), "a")]}).to_string();
        let inline = format!("{key}{}", " ".repeat(1024));
        let limits = json!({"maxJwksBytes": 1024});
        let err = error(json!({"jwtRules": [{"issuer": "i", "jwks": inline}], "limits": limits}));
        assert_eq!(err.field, "jwtRules[0].jwks");
        assert!(err.reason.contains("exceeds the 1024-byte limit"), "{}", err.reason);
    }
}
