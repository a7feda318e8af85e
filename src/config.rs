//! Plugin configuration: parsed once from JSON, validated, and compiled into matchers and providers.
//!
//! The JSON shape is Istio's RequestAuthentication `jwtRules` and AuthorizationPolicy `rules`, so
//! users can paste theirs. Unlike Istio, which skips a rule it cannot understand, we refuse the
//! whole configuration and say which field is wrong: a silently dropped rule changes who gets in.

use crate::extract::TokenLocation;
use crate::jwks::{self, KeySet};
use crate::jwt::TokenLimits;
use crate::policy::{ClaimPath, Condition, ConditionKey, Operation, Policies, Policy, Rule, Source, StringMatch};
use serde::Deserialize;
use std::fmt;

/// Clock skew allowed when checking `exp` and `nbf`, as in Istio and Envoy.
pub const CLOCK_SKEW_SECONDS: u64 = 60;
/// JWKS fetch timeout when `timeout` is not given (Istio's default).
pub const DEFAULT_FETCH_TIMEOUT_MS: u64 = 5_000;

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
    pub limits: Limits,
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

/// Where and how to fetch a JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    pub uri: String,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
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
    paths: Vec<String>,
    #[serde(default)]
    not_paths: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    not_methods: Vec<String>,
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
        let mut deserializer = serde_json::Deserializer::from_slice(json);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
            let field = json_path(&err.path().to_string());
            ConfigError::new(field, err.inner().to_string())
        })?;
        if raw.jwt_rules.is_empty() && raw.policies.is_empty() {
            return Err(ConfigError::new("", "neither jwtRules nor policies are given"));
        }
        compile(raw)
    }
}

/// serde_path_to_error writes `jwtRules[0].issuer` already; its root is `.`.
fn json_path(path: &str) -> String {
    // `?` is where the document itself is not JSON: there is no field to name.
    if path == "." || path == "?" {
        String::new()
    } else {
        path.to_string()
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

    let mut deny = Vec::new();
    let mut allow = Vec::new();
    for (index, policy) in raw.policies.into_iter().enumerate() {
        let field = format!("policies[{index}]");
        let action = policy.action.as_deref().unwrap_or("ALLOW");
        let compiled = compile_policy(policy.name, policy.rules, &field, index)?;
        match action {
            "ALLOW" => allow.push(compiled),
            "DENY" => deny.push(compiled),
            other => {
                return Err(ConfigError::new(
                    format!("{field}.action"),
                    format!("unsupported action {other:?}: expected ALLOW or DENY"),
                ))
            }
        }
    }
    Ok(Config { providers, token_locations, policies: Policies { deny, allow }, output_headers, limits })
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
    let timeout_ms = match &rule.timeout {
        None => DEFAULT_FETCH_TIMEOUT_MS,
        Some(text) => parse_duration_ms(text).filter(|ms| *ms > 0).ok_or_else(|| {
            ConfigError::new(
                format!("{field}.timeout"),
                format!("{text:?} is not a positive duration such as \"5s\" or \"500ms\""),
            )
        })?,
    };
    let keys = match (&rule.jwks, &rule.jwks_uri) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                format!("{field}.jwks"),
                "give either jwks (inline keys) or jwksUri, not both",
            ))
        }
        (None, None) => {
            return Err(ConfigError::new(format!("{field}.jwksUri"), "required (or give the keys inline in jwks)"))
        }
        (Some(inline), None) => {
            if rule.jwks_cluster.is_some() {
                return Err(ConfigError::new(format!("{field}.jwksCluster"), "only meaningful with jwksUri"));
            }
            let parsed = jwks::parse_with_limit(inline.as_bytes(), limits.max_jwks_bytes)
                .map_err(|err| ConfigError::new(format!("{field}.jwks"), err.to_string()))?;
            KeySource::Inline(parsed.key_set)
        }
        (None, Some(uri)) => {
            let target = parse_http_uri(uri).ok_or_else(|| {
                ConfigError::new(
                    format!("{field}.jwksUri"),
                    format!("{uri:?} is not an absolute http:// or https:// URI"),
                )
            })?;
            let cluster = match &rule.jwks_cluster {
                Some(name) if name.trim().is_empty() => {
                    return Err(ConfigError::new(format!("{field}.jwksCluster"), "must not be empty"))
                }
                Some(name) => name.clone(),
                // Istio names the outbound cluster of a service this way; a ServiceEntry for the
                // identity provider's host creates it.
                None => format!("outbound|{}||{}", target.port, target.host),
            };
            KeySource::Remote(RemoteJwks {
                uri: uri.clone(),
                cluster,
                authority: target.authority,
                path: target.path,
                timeout_ms,
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

fn compile_policy(name: String, raw_rules: Vec<RawRule>, field: &str, index: usize) -> Result<Policy, ConfigError> {
    let name = if name.is_empty() { format!("policies[{index}]") } else { name };
    let mut rules = Vec::with_capacity(raw_rules.len());
    for (r, rule) in raw_rules.into_iter().enumerate() {
        let rule_field = format!("{field}.rules[{r}]");
        let mut from = Vec::new();
        for (s, raw) in rule.from.into_iter().enumerate() {
            let f = format!("{rule_field}.from[{s}].source");
            from.push(Source {
                request_principals: string_matches(raw.source.request_principals, &format!("{f}.requestPrincipals"))?,
                not_request_principals: string_matches(
                    raw.source.not_request_principals,
                    &format!("{f}.notRequestPrincipals"),
                )?,
            });
        }
        let mut to = Vec::new();
        for (o, raw) in rule.to.into_iter().enumerate() {
            let f = format!("{rule_field}.to[{o}].operation");
            to.push(Operation {
                paths: path_matches(raw.operation.paths, &format!("{f}.paths"))?,
                not_paths: path_matches(raw.operation.not_paths, &format!("{f}.notPaths"))?,
                methods: non_empty(raw.operation.methods, &format!("{f}.methods"))?,
                not_methods: non_empty(raw.operation.not_methods, &format!("{f}.notMethods"))?,
            });
        }
        let mut when = Vec::new();
        for (c, raw) in rule.when.into_iter().enumerate() {
            let f = format!("{rule_field}.when[{c}]");
            let key = ConditionKey::parse(&raw.key).map_err(|reason| ConfigError::new(format!("{f}.key"), reason))?;
            if raw.values.is_empty() && raw.not_values.is_empty() {
                return Err(ConfigError::new(f, "at least one of values or notValues is required"));
            }
            when.push(Condition {
                key,
                values: string_matches(raw.values, &format!("{f}.values"))?,
                not_values: string_matches(raw.not_values, &format!("{f}.notValues"))?,
            });
        }
        rules.push(Rule { from, to, when });
    }
    Ok(Policy { name, rules })
}

fn non_empty(values: Vec<String>, field: &str) -> Result<Vec<String>, ConfigError> {
    for (i, value) in values.iter().enumerate() {
        if value.is_empty() {
            return Err(ConfigError::new(format!("{field}[{i}]"), "must not be empty"));
        }
    }
    Ok(values)
}

fn string_matches(values: Vec<String>, field: &str) -> Result<Vec<StringMatch>, ConfigError> {
    non_empty(values, field).map(|values| values.iter().map(|v| StringMatch::parse(v)).collect())
}

fn path_matches(values: Vec<String>, field: &str) -> Result<Vec<StringMatch>, ConfigError> {
    let values = non_empty(values, field)?;
    for (i, value) in values.iter().enumerate() {
        let inner = value.trim_start_matches('*').trim_end_matches('*');
        if inner.contains('*') {
            return Err(ConfigError::new(
                format!("{field}[{i}]"),
                format!("{value:?}: `*` is only allowed as a whole value, a prefix (`*.html`) or a suffix (`/api/*`)"),
            ));
        }
        if value.contains('{') || value.contains('}') {
            return Err(ConfigError::new(
                format!("{field}[{i}]"),
                format!("{value:?}: path templates are not supported"),
            ));
        }
    }
    Ok(values.iter().map(|v| StringMatch::parse(v)).collect())
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

struct HttpTarget {
    host: String,
    port: u16,
    authority: String,
    path: String,
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
                "positive duration",
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
            (json!({"policies": [{"name": "p", "action": "MAYBE"}]}), "policies[0].action", "expected ALLOW or DENY"),
            (
                json!({"policies": [{"rules": [{"to": [{"operation": {"paths": ["/a/*/b"]}}]}]}]}),
                "policies[0].rules[0].to[0].operation.paths[0]",
                "only allowed",
            ),
            (
                json!({"policies": [{"rules": [{"to": [{"operation": {"hosts": ["a"]}}]}]}]}),
                "policies[0].rules[0].to[0].operation.hosts",
                "unknown field `hosts`",
            ),
            (
                json!({"policies": [{"rules": [{"when": [{"key": "source.ip", "values": ["1.2.3.4"]}]}]}]}),
                "policies[0].rules[0].when[0].key",
                "unsupported key",
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
