//! The configuration's JSON shape, as users write it: Istio's field names, nothing compiled yet,
//! and how each is read from the parsed tree (`json::read_object`: unknown fields refused, serde's
//! messages, the path of the member that is wrong).

use super::json::Path;
use super::json::{items, member, read_object, required, string_lists, Member, ReadError, Slot};
use crate::json::Value;

// ---------------------------------------------------------------------------------------------
// The JSON shape.
#[derive(Default)]
pub(super) struct RawConfig {
    pub(super) jwt_rules: Vec<RawJwtRule>,
    pub(super) policies: Vec<RawPolicy>,
    pub(super) token_requirements: Vec<RawTokenRequirement>,
    /// Refused: `remote.ip` is Envoy's own client address now (see `RawConnectionManager`).
    pub(super) num_trusted_proxies: Option<u32>,
    pub(super) connection_manager: Option<RawConnectionManager>,
    /// The mesh's trust domain (Istio's meshConfig `trustDomain`), for `trustDomainAliases`.
    pub(super) trust_domain: Option<String>,
    /// Istio's meshConfig `trustDomainAliases`: a principal in the trust domain or one of these
    /// matches the same identity in each.
    pub(super) trust_domain_aliases: Vec<String>,
    pub(super) unsafe_paths: Option<String>,
    pub(super) signature_backend: Option<String>,
    pub(super) cors_preflight: Option<String>,
    pub(super) space_delimited_claims: Vec<String>,
    pub(super) limits: Option<RawLimits>,
}

/// The operator's statement of the HTTP connection manager's settings the filter runs behind,
/// with Envoy's field names: they decide what Envoy reports as the client's address.
#[derive(Default)]
pub(super) struct RawConnectionManager {
    pub(super) use_remote_address: bool,
    pub(super) xff_num_trusted_hops: u32,
}
#[derive(Default)]
pub(super) struct RawLimits {
    pub(super) max_token_bytes: Option<u64>,
    pub(super) max_claim_depth: Option<u64>,
    pub(super) max_jwks_bytes: Option<u64>,
    pub(super) token_cache_size: Option<u64>,
    pub(super) identity_cache_size: Option<u64>,
    pub(super) dpop_replay_capacity: Option<u64>,
}
#[derive(Default)]
pub(super) struct RawJwtRule {
    pub(super) issuer: String,
    pub(super) audiences: Vec<String>,
    pub(super) jwks_uri: Option<String>,
    pub(super) jwks_cluster: Option<String>,
    pub(super) jwks: Option<String>,
    /// Allow-list of JWS algorithms for this issuer (no Istio/Envoy equivalent); all when absent.
    pub(super) algorithms: Option<Vec<String>>,
    pub(super) from_headers: Vec<RawFromHeader>,
    pub(super) from_params: Vec<String>,
    pub(super) from_cookies: Vec<String>,
    pub(super) forward_original_token: bool,
    pub(super) output_payload_to_header: Option<String>,
    pub(super) output_claim_to_headers: Vec<RawClaimToHeader>,
    pub(super) timeout: Option<String>,
    pub(super) cache_duration: Option<String>,
    pub(super) stale_if_error: Option<String>,
    pub(super) unknown_kid_refetch_interval: Option<String>,
    pub(super) clock_skew: Option<String>,
    pub(super) require_expiration: Option<bool>,
    pub(super) max_lifetime: Option<String>,
    /// `requiredClaims`: claim name -> the values it may have, in name order.
    pub(super) required_claims: Vec<(String, Vec<String>)>,
    /// `dpop`: disabled, optional (the default) or required.
    pub(super) dpop: Option<String>,
    /// `introspection`: the RFC 7662 endpoint for opaque tokens.
    pub(super) introspection: Option<RawIntrospection>,
}
#[derive(Default)]
pub(super) struct RawIntrospection {
    pub(super) endpoint: String,
    pub(super) cluster: Option<String>,
    pub(super) client_id: String,
    pub(super) client_secret: Option<String>,
    pub(super) client_secret_env: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) cache_duration: Option<String>,
}
#[derive(Default)]
pub(super) struct RawFromHeader {
    pub(super) name: String,
    pub(super) prefix: String,
}
#[derive(Default)]
pub(super) struct RawClaimToHeader {
    pub(super) header: String,
    pub(super) claim: String,
}
#[derive(Default)]
pub(super) struct RawPolicy {
    pub(super) name: String,
    pub(super) action: Option<String>,
    pub(super) rules: Vec<RawRule>,
    pub(super) dry_run: bool,
}
#[derive(Default)]
pub(super) struct RawTokenRequirement {
    pub(super) name: String,
    pub(super) matcher: RawOperation,
    pub(super) skip_validation: bool,
    pub(super) issuers: Vec<String>,
}
#[derive(Default)]
pub(super) struct RawRule {
    pub(super) from: Vec<RawFrom>,
    pub(super) to: Vec<RawTo>,
    pub(super) when: Vec<RawCondition>,
}
#[derive(Default)]
pub(super) struct RawFrom {
    pub(super) source: RawSource,
}
#[derive(Default)]
pub(super) struct RawSource {
    pub(super) request_principals: Vec<String>,
    pub(super) not_request_principals: Vec<String>,
    pub(super) ip_blocks: Vec<String>,
    pub(super) not_ip_blocks: Vec<String>,
    pub(super) remote_ip_blocks: Vec<String>,
    pub(super) not_remote_ip_blocks: Vec<String>,
    pub(super) principals: Vec<String>,
    pub(super) not_principals: Vec<String>,
    pub(super) namespaces: Vec<String>,
    pub(super) not_namespaces: Vec<String>,
    pub(super) service_accounts: Vec<String>,
    pub(super) not_service_accounts: Vec<String>,
    pub(super) trust_domains: Vec<String>,
    pub(super) not_trust_domains: Vec<String>,
}
#[derive(Default)]
pub(super) struct RawTo {
    pub(super) operation: RawOperation,
}
#[derive(Default)]
pub(super) struct RawOperation {
    pub(super) hosts: Vec<String>,
    pub(super) not_hosts: Vec<String>,
    pub(super) ports: Vec<RawPort>,
    pub(super) not_ports: Vec<RawPort>,
    pub(super) paths: Vec<String>,
    pub(super) not_paths: Vec<String>,
    pub(super) methods: Vec<String>,
    pub(super) not_methods: Vec<String>,
}

/// Istio writes ports as strings (`"8080"`); a JSON number means the same and is accepted.
pub(super) enum RawPort {
    Number(u64),
    Text(String),
}
#[derive(Default)]
pub(super) struct RawCondition {
    pub(super) key: String,
    pub(super) values: Vec<String>,
    pub(super) not_values: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Reading them.

/// The fields of a rule's `source`, as Istio's AuthorizationPolicy names them (the CLI's
/// `convert` copies exactly these).
#[rustfmt::skip]
pub const SOURCE_FIELDS: [&str; 14] = [
    "requestPrincipals", "notRequestPrincipals", "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks",
    "principals", "notPrincipals", "namespaces", "notNamespaces", "serviceAccounts", "notServiceAccounts",
    "trustDomains", "notTrustDomains",
];

type Read<T> = Result<T, ReadError>;

/// Stores what a `Slot::With` closure read.
fn set<T>(slot: &mut T, read: Read<T>) -> Read<()> {
    *slot = read?;
    Ok(())
}

// Each reader fills a default value through its member table (config/json.rs, `read_object`):
// the table order is the order fields are checked in and named in "expected one of" messages.

impl RawConfig {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    pub(super) fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawConfig> {
        let mut r = RawConfig::default();
        let (mut jwt_rules, mut policies, mut requirements, mut manager, mut limits) =
            (Vec::new(), Vec::new(), Vec::new(), None, None);
        read_object(
            value,
            path,
            "a configuration object",
            &mut [
                member("jwtRules", Slot::With(&mut |v, p| set(&mut jwt_rules, items(v, p, RawJwtRule::read)))),
                member("policies", Slot::With(&mut |v, p| set(&mut policies, items(v, p, RawPolicy::read)))),
                member(
                    "tokenRequirements",
                    Slot::With(&mut |v, p| set(&mut requirements, items(v, p, RawTokenRequirement::read))),
                ),
                member("numTrustedProxies", Slot::MaybeU32(&mut r.num_trusted_proxies)),
                member(
                    "connectionManager",
                    Slot::MaybeWith(&mut |v, p| set(&mut manager, RawConnectionManager::read(v, p).map(Some))),
                ),
                member("trustDomain", Slot::MaybeText(&mut r.trust_domain)),
                member("trustDomainAliases", Slot::Texts(&mut r.trust_domain_aliases)),
                member("unsafePaths", Slot::MaybeText(&mut r.unsafe_paths)),
                member("signatureBackend", Slot::MaybeText(&mut r.signature_backend)),
                member("corsPreflight", Slot::MaybeText(&mut r.cors_preflight)),
                member("spaceDelimitedClaims", Slot::Texts(&mut r.space_delimited_claims)),
                member("limits", Slot::MaybeWith(&mut |v, p| set(&mut limits, RawLimits::read(v, p).map(Some)))),
            ],
        )?;
        (r.jwt_rules, r.policies, r.token_requirements) = (jwt_rules, policies, requirements);
        (r.connection_manager, r.limits) = (manager, limits);
        Ok(r)
    }
}

impl RawConnectionManager {
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawConnectionManager> {
        let mut r = RawConnectionManager::default();
        read_object(
            value,
            path,
            "connectionManager settings",
            &mut [
                required("useRemoteAddress", Slot::Flag(&mut r.use_remote_address)),
                member("xffNumTrustedHops", Slot::U32(&mut r.xff_num_trusted_hops)),
            ],
        )?;
        Ok(r)
    }
}

impl RawLimits {
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawLimits> {
        let mut r = RawLimits::default();
        read_object(
            value,
            path,
            "limits",
            &mut [
                member("maxTokenBytes", Slot::MaybeU64(&mut r.max_token_bytes)),
                member("maxClaimDepth", Slot::MaybeU64(&mut r.max_claim_depth)),
                member("maxJwksBytes", Slot::MaybeU64(&mut r.max_jwks_bytes)),
                member("tokenCacheSize", Slot::MaybeU64(&mut r.token_cache_size)),
                member("identityCacheSize", Slot::MaybeU64(&mut r.identity_cache_size)),
                member("dpopReplayCapacity", Slot::MaybeU64(&mut r.dpop_replay_capacity)),
            ],
        )?;
        Ok(r)
    }
}

impl RawJwtRule {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawJwtRule> {
        let mut r = RawJwtRule::default();
        let (mut from_headers, mut claim_headers, mut required_claims) = (Vec::new(), Vec::new(), Vec::new());
        let mut introspection = None;
        read_object(
            value,
            path,
            "a jwtRules entry",
            &mut [
                required("issuer", Slot::Text(&mut r.issuer)),
                member("audiences", Slot::Texts(&mut r.audiences)),
                member("jwksUri", Slot::MaybeText(&mut r.jwks_uri)),
                member("jwksCluster", Slot::MaybeText(&mut r.jwks_cluster)),
                member("jwks", Slot::MaybeText(&mut r.jwks)),
                member("algorithms", Slot::MaybeTexts(&mut r.algorithms)),
                member("fromHeaders", Slot::With(&mut |v, p| set(&mut from_headers, items(v, p, RawFromHeader::read)))),
                member("fromParams", Slot::Texts(&mut r.from_params)),
                member("fromCookies", Slot::Texts(&mut r.from_cookies)),
                member("forwardOriginalToken", Slot::Flag(&mut r.forward_original_token)),
                member("outputPayloadToHeader", Slot::MaybeText(&mut r.output_payload_to_header)),
                member(
                    "outputClaimToHeaders",
                    Slot::With(&mut |v, p| set(&mut claim_headers, items(v, p, RawClaimToHeader::read))),
                ),
                member("timeout", Slot::MaybeText(&mut r.timeout)),
                member("cacheDuration", Slot::MaybeText(&mut r.cache_duration)),
                member("staleIfError", Slot::MaybeText(&mut r.stale_if_error)),
                member("unknownKidRefetchInterval", Slot::MaybeText(&mut r.unknown_kid_refetch_interval)),
                member("clockSkew", Slot::MaybeText(&mut r.clock_skew)),
                member("requireExpiration", Slot::MaybeFlag(&mut r.require_expiration)),
                member("maxLifetime", Slot::MaybeText(&mut r.max_lifetime)),
                member("requiredClaims", Slot::With(&mut |v, p| set(&mut required_claims, string_lists(v, p)))),
                member("dpop", Slot::MaybeText(&mut r.dpop)),
                member(
                    "introspection",
                    Slot::MaybeWith(&mut |v, p| set(&mut introspection, RawIntrospection::read(v, p).map(Some))),
                ),
            ],
        )?;
        (r.from_headers, r.output_claim_to_headers) = (from_headers, claim_headers);
        r.required_claims = required_claims;
        r.introspection = introspection;
        Ok(r)
    }
}

impl RawIntrospection {
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawIntrospection> {
        let mut r = RawIntrospection::default();
        read_object(
            value,
            path,
            "an introspection object",
            &mut [
                required("endpoint", Slot::Text(&mut r.endpoint)),
                member("cluster", Slot::MaybeText(&mut r.cluster)),
                required("clientId", Slot::Text(&mut r.client_id)),
                member("clientSecret", Slot::MaybeText(&mut r.client_secret)),
                member("clientSecretEnv", Slot::MaybeText(&mut r.client_secret_env)),
                member("timeout", Slot::MaybeText(&mut r.timeout)),
                member("cacheDuration", Slot::MaybeText(&mut r.cache_duration)),
            ],
        )?;
        Ok(r)
    }
}

impl RawFromHeader {
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawFromHeader> {
        let mut r = RawFromHeader::default();
        read_object(
            value,
            path,
            "a fromHeaders entry",
            &mut [required("name", Slot::Text(&mut r.name)), member("prefix", Slot::Text(&mut r.prefix))],
        )?;
        Ok(r)
    }
}

impl RawClaimToHeader {
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawClaimToHeader> {
        let mut r = RawClaimToHeader::default();
        read_object(
            value,
            path,
            "an outputClaimToHeaders entry",
            &mut [required("header", Slot::Text(&mut r.header)), required("claim", Slot::Text(&mut r.claim))],
        )?;
        Ok(r)
    }
}

impl RawPolicy {
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawPolicy> {
        let mut r = RawPolicy::default();
        let mut rules = Vec::new();
        read_object(
            value,
            path,
            "a policy",
            &mut [
                member("name", Slot::Text(&mut r.name)),
                member("action", Slot::MaybeText(&mut r.action)),
                member("rules", Slot::With(&mut |v, p| set(&mut rules, items(v, p, RawRule::read)))),
                member("dryRun", Slot::Flag(&mut r.dry_run)),
            ],
        )?;
        r.rules = rules;
        Ok(r)
    }
}

impl RawTokenRequirement {
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawTokenRequirement> {
        let mut r = RawTokenRequirement::default();
        let mut matcher = RawOperation::default();
        read_object(
            value,
            path,
            "a tokenRequirements entry",
            &mut [
                member("name", Slot::Text(&mut r.name)),
                required("match", Slot::With(&mut |v, p| set(&mut matcher, RawOperation::read(v, p)))),
                member("skipValidation", Slot::Flag(&mut r.skip_validation)),
                member("issuers", Slot::Texts(&mut r.issuers)),
            ],
        )?;
        r.matcher = matcher;
        Ok(r)
    }
}

impl RawRule {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawRule> {
        let mut r = RawRule::default();
        read_object(
            value,
            path,
            "a rule",
            &mut [
                member("from", Slot::With(&mut |v, p| set(&mut r.from, items(v, p, RawFrom::read)))),
                member("to", Slot::With(&mut |v, p| set(&mut r.to, items(v, p, RawTo::read)))),
                member("when", Slot::With(&mut |v, p| set(&mut r.when, items(v, p, RawCondition::read)))),
            ],
        )?;
        Ok(r)
    }
}

impl RawFrom {
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawFrom> {
        let mut r = RawFrom::default();
        read_object(
            value,
            path,
            "a from entry",
            &mut [required("source", Slot::With(&mut |v, p| set(&mut r.source, RawSource::read(v, p))))],
        )?;
        Ok(r)
    }
}

impl RawSource {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawSource> {
        let mut r = RawSource::default();
        let slots = [
            &mut r.request_principals,
            &mut r.not_request_principals,
            &mut r.ip_blocks,
            &mut r.not_ip_blocks,
            &mut r.remote_ip_blocks,
            &mut r.not_remote_ip_blocks,
            &mut r.principals,
            &mut r.not_principals,
            &mut r.namespaces,
            &mut r.not_namespaces,
            &mut r.service_accounts,
            &mut r.not_service_accounts,
            &mut r.trust_domains,
            &mut r.not_trust_domains,
        ];
        // The names are SOURCE_FIELDS (which the CLI's convert copies), in the slots' order.
        let mut table: Vec<Member<'_, 'a>> =
            SOURCE_FIELDS.into_iter().zip(slots).map(|(name, slot)| member(name, Slot::Texts(slot))).collect();
        read_object(value, path, "a source", &mut table)?;
        drop(table);
        Ok(r)
    }
}

impl RawTo {
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawTo> {
        let mut r = RawTo::default();
        read_object(
            value,
            path,
            "a to entry",
            &mut [required("operation", Slot::With(&mut |v, p| set(&mut r.operation, RawOperation::read(v, p))))],
        )?;
        Ok(r)
    }
}

impl RawOperation {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawOperation> {
        let mut r = RawOperation::default();
        let (mut ports, mut not_ports) = (Vec::new(), Vec::new());
        read_object(
            value,
            path,
            "an operation",
            &mut [
                member("hosts", Slot::Texts(&mut r.hosts)),
                member("notHosts", Slot::Texts(&mut r.not_hosts)),
                member("ports", Slot::With(&mut |v, p| set(&mut ports, items(v, p, RawPort::read)))),
                member("notPorts", Slot::With(&mut |v, p| set(&mut not_ports, items(v, p, RawPort::read)))),
                member("paths", Slot::Texts(&mut r.paths)),
                member("notPaths", Slot::Texts(&mut r.not_paths)),
                member("methods", Slot::Texts(&mut r.methods)),
                member("notMethods", Slot::Texts(&mut r.not_methods)),
            ],
        )?;
        (r.ports, r.not_ports) = (ports, not_ports);
        Ok(r)
    }
}

impl RawPort {
    fn read(value: &Value, _: &Path<'_>) -> Read<RawPort> {
        match value {
            Value::Number(n) if n.as_u64().is_some() => Ok(RawPort::Number(n.as_u64().unwrap_or_default())),
            Value::String(text) => Ok(RawPort::Text(text.clone())),
            _ => Err("data did not match any variant of untagged enum RawPort".to_string()),
        }
    }
}

impl RawCondition {
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawCondition> {
        let mut r = RawCondition::default();
        read_object(
            value,
            path,
            "a when condition",
            &mut [
                required("key", Slot::Text(&mut r.key)),
                member("values", Slot::Texts(&mut r.values)),
                member("notValues", Slot::Texts(&mut r.not_values)),
            ],
        )?;
        Ok(r)
    }
}
