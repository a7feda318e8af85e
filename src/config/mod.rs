//! Plugin configuration: parsed once from JSON, validated, and compiled into matchers and providers.
//!
//! The JSON shape is Istio's RequestAuthentication `jwtRules` and AuthorizationPolicy `rules`, so
//! users can paste theirs. Unlike Istio, which skips a rule it cannot understand, we refuse the
//! whole configuration and say which field is wrong: a silently dropped rule changes who gets in.

mod field;
mod json;
mod policy;
mod provider;
mod raw;

pub use raw::SOURCE_FIELDS;

pub use provider::parse_duration_ms;

use crate::authn::extract::TokenLocation;
use crate::authn::introspection::ClientSecret;
use crate::authn::jwt::TokenLimits;
use crate::authn::replay::{self, ReplayStore};
use crate::authn::token_cache;
use crate::authn::verify::SignatureBackend;
use crate::authn::{Issuers, Provider};
use crate::authz::{ConnectionReads, CorsPreflight, Policies, TokenRequirement, UnsafePathAction};
use crate::keys::{jwks, KeySource};
use policy::first_source_ip_field;
use policy::{compile_policies, compile_token_requirements};
use provider::compile_provider;
use raw::{RawConfig, RawConnectionManager, RawJwtRule, RawLimits};
use std::fmt;

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
    /// `jwtRules` and the token limits: what authentication reads.
    pub issuers: Issuers,
    pub policies: Policies,
    /// Headers the filter writes (claim and payload outputs); a client's own copies are removed.
    pub output_headers: Vec<String>,
    /// Per-path token requirements, first match wins.
    pub token_requirements: Vec<TokenRequirement>,
    /// Envoy's `source.address` is the TCP peer (the operator stated a connection manager with
    /// `use_remote_address: true` and `xff_num_trusted_hops: 0`), so `source.ip` may be read.
    pub peer_is_source_address: bool,
    pub unsafe_paths: UnsafePathAction,
    /// `corsPreflight`: whether CORS preflights skip authentication (Istio's default).
    pub cors_preflight: CorsPreflight,
    /// `signatureBackend`: whether the host's `verify_signature` may verify signatures.
    pub signature_backend: SignatureBackend,
    /// `limits.maxJwksBytes`: fetched key sets and discovery documents above it are refused.
    pub max_jwks_bytes: usize,
    /// `limits.tokenCacheSize` and `limits.identityCacheSize`: how many verified tokens each VM
    /// remembers, and how many of those with their parsed identity.
    pub token_cache: (usize, usize),
    /// `limits.dpopReplayCapacity`: where DPoP proofs' `jti`s are remembered, and how many.
    pub replay: ReplayStore,
    /// The connection attributes policies and requirements read: the host fetches only these.
    pub connection_reads: ConnectionReads,
}

/// Bounds on attacker-sized input (`limits`), while compiling. Over-limit tokens get 401;
/// over-limit JWKS documents are refused like any other bad fetch (previous keys kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    token: TokenLimits,
    max_jwks_bytes: usize,
    token_cache: (usize, usize),
    replay: ReplayStore,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            token: TokenLimits::default(),
            max_jwks_bytes: jwks::MAX_JWKS_BYTES,
            token_cache: (token_cache::VERIFIED_CAPACITY, token_cache::IDENTITY_CAPACITY),
            replay: ReplayStore::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing and compilation.

impl Config {
    /// Every provider's issuer and key source, in `ProviderId` order: what the key cache holds.
    pub fn key_sources(&self) -> impl Iterator<Item = (&str, &KeySource)> {
        self.issuers.providers.iter().map(|provider| (provider.issuer.as_str(), &provider.keys))
    }

    /// Parses, validates and compiles a plugin configuration. An empty configuration is an error:
    /// a filter that checks nothing is almost certainly a deployment mistake. The first error
    /// (`parse_all` has every one).
    pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
        Config::parse_all(json).map_err(|mut errors| {
            if errors.is_empty() {
                ConfigError::new("", "invalid configuration")
            } else {
                errors.swap_remove(0)
            }
        })
    }

    /// As `parse`, with every error: each `jwtRules` entry, policy, token requirement and top-level
    /// setting is compiled on its own and reports its first error (`check` and the filter's log
    /// list them all). A document that is not JSON, or a member of the wrong type, is one error:
    /// nothing after it can be read.
    #[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
    pub fn parse_all(json: &[u8]) -> Result<Config, Vec<ConfigError>> {
        Config::read(json).map_err(|error| vec![error]).and_then(compile)
    }

    /// The same, with every `introspection.clientSecretEnv` read through `env` (the VM's
    /// environment): an unset one is an error of its field. `parse_all` leaves them unread (the
    /// `check` command has no VM environment).
    pub fn parse_all_with_env(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Vec<ConfigError>> {
        let mut config = Config::parse_all(json)?;
        let mut errors = Vec::new();
        for (index, provider) in config.issuers.providers.iter_mut().enumerate() {
            let Some(introspection) = provider.introspection.as_mut() else { continue };
            let ClientSecret::Env(name) = &introspection.secret else { continue };
            match env(name).filter(|value| !value.is_empty()) {
                Some(secret) => introspection.secret = ClientSecret::Inline(secret),
                None => errors.push(ConfigError::new(
                    format!("jwtRules[{index}].introspection.clientSecretEnv"),
                    format!(
                        "{} is not set in the Wasm VM's environment (Istio: the WasmPlugin's vmConfig.env; Envoy: vm_config.environment_variables)",
                        crate::json::Quoted(name)
                    ),
                )),
            }
        }
        match errors.is_empty() {
            true => Ok(config),
            false => Err(errors),
        }
    }

    fn read(json: &[u8]) -> Result<RawConfig, ConfigError> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::new("", "the plugin configuration is empty"));
        }
        let parse_path = json::Path::default();
        let document = json::parse_strict(json, &parse_path)
            .map_err(|err| ConfigError::new(parse_path.render(), err.to_string()))?;
        let path = json::Path::default();
        let raw = RawConfig::read(&document, &path).map_err(|err| ConfigError::new(path.render(), err))?;
        if raw.jwt_rules.is_empty() && raw.policies.is_empty() {
            return Err(ConfigError::new("", "neither jwtRules nor policies are given"));
        }
        Ok(raw)
    }
}

/// The value of a step that compiled, or `fallback` with its error noted: the steps after it still
/// run, so that one run reports every independent error.
fn keep<T>(errors: &mut Vec<ConfigError>, result: Result<T, ConfigError>, fallback: T) -> T {
    result.unwrap_or_else(|error| {
        errors.push(error);
        fallback
    })
}

#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn compile(raw: RawConfig) -> Result<Config, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let limits = keep(&mut errors, compile_limits(raw.limits.as_ref()), Limits::default());
    let (providers, token_locations, output_headers) = compile_providers(raw.jwt_rules, &limits, &mut errors);
    let providers_complete = errors.is_empty();

    // Where a rule first reads source.ip, checked once the values themselves are known to be valid.
    let source_ip_field = first_source_ip_field(&raw.policies);
    let trust_domains = keep(&mut errors, trust_domains(raw.trust_domain, raw.trust_domain_aliases), Vec::new());
    let policies = compile_policies(&raw.policies, &raw.space_delimited_claims, &trust_domains, &mut errors);
    let peer_is_source_address = keep(
        &mut errors,
        peer_is_source_address(raw.num_trusted_proxies, raw.connection_manager.as_ref(), source_ip_field),
        false,
    );
    // Requirements name issuers: against a partial list they would only repeat the errors above.
    let token_requirements = match providers_complete {
        true => keep(&mut errors, compile_token_requirements(&raw.token_requirements, &providers), Vec::new()),
        false => Vec::new(),
    };
    let unsafe_paths = choice(
        &mut errors,
        raw.unsafe_paths.as_deref(),
        "unsafePaths",
        &[("REJECT", UnsafePathAction::Reject), ("DENY", UnsafePathAction::Deny)],
        "expected REJECT (400) or DENY (403)",
    );
    let signature_backend = choice(
        &mut errors,
        raw.signature_backend.as_deref(),
        "signatureBackend",
        &[("auto", SignatureBackend::Auto), ("vm", SignatureBackend::Vm)],
        "expected \"auto\" (the host's verify_signature where it can) or \"vm\"",
    );
    let cors_preflight = choice(
        &mut errors,
        raw.cors_preflight.as_deref(),
        "corsPreflight",
        &[("BYPASS", CorsPreflight::Bypass), ("AUTHENTICATE", CorsPreflight::Authenticate)],
        "expected BYPASS (Istio's default: preflights need no token) or AUTHENTICATE",
    );
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Config {
        cors_preflight,
        signature_backend,
        connection_reads: ConnectionReads::of(&policies, &token_requirements),
        issuers: Issuers::new(providers, token_locations, limits.token),
        policies,
        output_headers,
        token_requirements,
        peer_is_source_address,
        unsafe_paths,
        max_jwks_bytes: limits.max_jwks_bytes,
        token_cache: limits.token_cache,
        replay: limits.replay,
    })
}

/// The providers in `jwtRules` order, every token location they read, every header they write.
type CompiledProviders = (Vec<Provider>, Vec<TokenLocation>, Vec<String>);

/// The `jwtRules` in order, with every token location they read and every header they write.
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn compile_providers(rules: Vec<RawJwtRule>, limits: &Limits, errors: &mut Vec<ConfigError>) -> CompiledProviders {
    let mut token_locations: Vec<TokenLocation> = Vec::new();
    let mut providers = Vec::with_capacity(rules.len());
    let mut output_headers: Vec<String> = Vec::new();
    for (index, rule) in rules.into_iter().enumerate() {
        let field = format!("jwtRules[{index}]");
        let provider = match compile_provider(rule, &field, &mut token_locations, limits) {
            Ok(provider) => provider,
            Err(error) => {
                errors.push(error);
                continue;
            }
        };
        if providers.iter().any(|p: &Provider| p.issuer == provider.issuer) {
            errors.push(ConfigError::new(
                format!("{field}.issuer"),
                format!("issuer {} is configured twice", crate::json::Quoted(&provider.issuer)),
            ));
            continue;
        }
        // An opaque token names no issuer: where it is found must say who is asked about it.
        let shared_place = |other: &Provider| {
            other.introspection.is_some() && other.locations.iter().any(|l| provider.locations.contains(l))
        };
        if provider.introspection.is_some() && providers.iter().any(shared_place) {
            errors.push(ConfigError::new(
                format!("{field}.introspection"),
                "another jwtRules entry introspects tokens found in the same place: an opaque token would not say which to ask (give them different fromHeaders)",
            ));
            continue;
        }
        output_headers.extend(provider.output_payload_to_header.iter().cloned());
        output_headers.extend(provider.output_claim_to_headers.iter().map(|c| c.header.clone()));
        providers.push(provider);
    }
    // Each header once, in name order: inserted where it belongs (a sort would be 4 KB of code
    // for a handful).
    let mut unique: Vec<String> = Vec::with_capacity(output_headers.len());
    for header in output_headers {
        if let Err(at) = unique.binary_search(&header) {
            unique.insert(at, header);
        }
    }
    let output_headers = unique;
    (providers, token_locations, output_headers)
}

/// A top-level setting that names one of `options`; the first is the default when it is absent.
/// Anything else is refused with `expected` (noted in `errors`), and the default stands in so that
/// the rest of the configuration is still checked.
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn choice<T: Copy>(
    errors: &mut Vec<ConfigError>,
    value: Option<&str>,
    field: &str,
    options: &[(&str, T); 2],
    expected: &str,
) -> T {
    let [(_, default), _] = *options;
    let Some(value) = value else { return default };
    match options.iter().find(|(name, _)| *name == value) {
        Some(&(_, option)) => option,
        None => {
            errors
                .push(ConfigError::new(field, format!("{value_q}: {expected}", value_q = crate::json::Quoted(value))));
            default
        }
    }
}

/// The mesh's trust domain and its aliases (istiod's trust domain bundle), in that order.
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn trust_domains(trust_domain: Option<String>, aliases: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let domain = trust_domain.unwrap_or_else(|| "cluster.local".to_string());
    for (field, value) in std::iter::once(("trustDomain".to_string(), &domain))
        .chain(aliases.iter().enumerate().map(|(i, a)| (format!("trustDomainAliases[{i}]"), a)))
    {
        if value.is_empty() || value.contains(['/', '*']) || value.chars().any(char::is_whitespace) {
            return Err(ConfigError::new(
                field,
                format!("{value_q} is not a trust domain", value_q = crate::json::Quoted(value)),
            ));
        }
    }
    let mut domains = vec![domain.clone()];
    domains.extend(aliases.into_iter().filter(|alias| *alias != domain));
    Ok(domains)
}

/// Whether `source.ip` (`ipBlocks`, `notIpBlocks`, the `source.ip` key) can be known: Istio means
/// the TCP peer, and Envoy hands a Wasm filter only its downstream remote address
/// (`source.address`), which the connection manager takes from `X-Forwarded-For` unless it runs
/// with `use_remote_address: true` and `xff_num_trusted_hops: 0`. In an Istio sidecar
/// (`use_remote_address: false`) that is the last entry the client wrote; on a gateway with
/// trusted proxies, the client they reported. Rather than guess, a rule that reads `source.ip`
/// needs the operator to state that setup (`connectionManager`); `remote.ip` is Envoy's address in
/// every setup, exactly as Istio's `remoteIpBlocks` is.
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn peer_is_source_address(
    num_trusted_proxies: Option<u32>,
    connection_manager: Option<&RawConnectionManager>,
    source_ip_field: Option<String>,
) -> Result<bool, ConfigError> {
    if num_trusted_proxies.is_some() {
        return Err(ConfigError::new(
            "numTrustedProxies",
            "no longer used: remote.ip is Envoy's own client address, which its connection manager computes from \
             X-Forwarded-For with xff_num_trusted_hops (in Istio: gatewayTopology.numTrustedProxies); remove this \
             field and state that setting in connectionManager.xffNumTrustedHops",
        ));
    }
    let peer =
        matches!(connection_manager, Some(RawConnectionManager { use_remote_address: true, xff_num_trusted_hops: 0 }));
    match (peer, source_ip_field) {
        (false, Some(field)) => Err(ConfigError::new(
            field,
            match connection_manager {
                None => "source.ip is the TCP peer, and Envoy shows this filter the peer only when its connection \
                         manager runs with use_remote_address: true and xff_num_trusted_hops: 0 (an Istio sidecar runs \
                         use_remote_address: false, where the address comes from X-Forwarded-For, which the client \
                         writes): state that setup with \"connectionManager\": {\"useRemoteAddress\": true}, or use \
                         remoteIpBlocks / remote.ip for the client's address"
                    .to_string(),
                Some(stated) => format!(
                    "source.ip is the TCP peer, which Envoy does not show this filter with use_remote_address: {} and \
                     xff_num_trusted_hops: {} (its address is taken from X-Forwarded-For): use remoteIpBlocks / \
                     remote.ip, or keep this rule in an Istio AuthorizationPolicy",
                    stated.use_remote_address, stated.xff_num_trusted_hops
                ),
            },
        )),
        _ => Ok(peer),
    }
}

/// Each limit must lie in a range where it still protects: a token limit above Envoy's largest
/// header size or a depth beyond serde_json's own recursion limit (128) would be a silent no-op.
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
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
        // 0 turns a tier off; the identity tier is a subset of the verified one.
        token_cache: (
            // Reserved at configure and never given back (linear memory does not shrink): at most
            // about 8 MiB and 6 MiB per worker VM.
            bounded(raw.token_cache_size, "tokenCacheSize", 0, 100_000, defaults.token_cache.0)?,
            bounded(raw.identity_cache_size, "identityCacheSize", 0, 1_000, defaults.token_cache.1)?,
        ),
        // Shared data, once for all workers: at most 24 MiB (`authn::replay`).
        replay: ReplayStore::with_capacity(bounded(
            raw.dpop_replay_capacity,
            "dpopReplayCapacity",
            replay::SLOTS_PER_BUCKET as u64,
            1 << 20,
            replay::DEFAULT_CAPACITY,
        )?),
    })
}

#[cfg(test)]
mod tests;
