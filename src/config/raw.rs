//! The configuration's JSON shape, as users write it: Istio's field names, nothing compiled yet,
//! and how each is read from the parsed tree (`json::Object`: unknown fields refused, serde's
//! messages, the path of the member that is wrong).

use super::json::Path;
use super::json::{boolean, list, string, strings, u32_value, u64_value, Object, ReadError};
use crate::json::Value;

// ---------------------------------------------------------------------------------------------
// The JSON shape.
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
pub(super) struct RawConnectionManager {
    pub(super) use_remote_address: bool,
    pub(super) xff_num_trusted_hops: u32,
}
pub(super) struct RawLimits {
    pub(super) max_token_bytes: Option<u64>,
    pub(super) max_claim_depth: Option<u64>,
    pub(super) max_jwks_bytes: Option<u64>,
    pub(super) token_cache_size: Option<u64>,
    pub(super) identity_cache_size: Option<u64>,
}
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
}
pub(super) struct RawFromHeader {
    pub(super) name: String,
    pub(super) prefix: String,
}
pub(super) struct RawClaimToHeader {
    pub(super) header: String,
    pub(super) claim: String,
}
pub(super) struct RawPolicy {
    pub(super) name: String,
    pub(super) action: Option<String>,
    pub(super) rules: Vec<RawRule>,
    pub(super) dry_run: bool,
}
pub(super) struct RawTokenRequirement {
    pub(super) name: String,
    pub(super) matcher: RawOperation,
    pub(super) skip_validation: bool,
    pub(super) issuers: Vec<String>,
}
pub(super) struct RawRule {
    pub(super) from: Vec<RawFrom>,
    pub(super) to: Vec<RawTo>,
    pub(super) when: Vec<RawCondition>,
}
pub(super) struct RawFrom {
    pub(super) source: RawSource,
}
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
pub(super) struct RawTo {
    pub(super) operation: RawOperation,
}
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

impl RawConfig {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    pub(super) fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawConfig> {
        let o = Object::new(
            value,
            path,
            "a configuration object",
            &[
                "jwtRules",
                "policies",
                "tokenRequirements",
                "numTrustedProxies",
                "connectionManager",
                "trustDomain",
                "trustDomainAliases",
                "unsafePaths",
                "signatureBackend",
                "corsPreflight",
                "spaceDelimitedClaims",
                "limits",
            ],
        )?;
        Ok(RawConfig {
            jwt_rules: o.or_default("jwtRules", list(RawJwtRule::read))?,
            policies: o.or_default("policies", list(RawPolicy::read))?,
            token_requirements: o.or_default("tokenRequirements", list(RawTokenRequirement::read))?,
            num_trusted_proxies: o.optional("numTrustedProxies", u32_value)?,
            connection_manager: o.optional("connectionManager", RawConnectionManager::read)?,
            trust_domain: o.optional("trustDomain", string)?,
            trust_domain_aliases: o.or_default("trustDomainAliases", strings)?,
            unsafe_paths: o.optional("unsafePaths", string)?,
            signature_backend: o.optional("signatureBackend", string)?,
            cors_preflight: o.optional("corsPreflight", string)?,
            space_delimited_claims: o.or_default("spaceDelimitedClaims", strings)?,
            limits: o.optional("limits", RawLimits::read)?,
        })
    }
}

impl RawConnectionManager {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawConnectionManager> {
        let o = Object::new(value, path, "connectionManager settings", &["useRemoteAddress", "xffNumTrustedHops"])?;
        Ok(RawConnectionManager {
            use_remote_address: o.required("useRemoteAddress", boolean)?,
            xff_num_trusted_hops: o.or_default("xffNumTrustedHops", u32_value)?,
        })
    }
}

impl RawLimits {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawLimits> {
        let o = Object::new(
            value,
            path,
            "limits",
            &["maxTokenBytes", "maxClaimDepth", "maxJwksBytes", "tokenCacheSize", "identityCacheSize"],
        )?;
        Ok(RawLimits {
            max_token_bytes: o.optional("maxTokenBytes", u64_value)?,
            max_claim_depth: o.optional("maxClaimDepth", u64_value)?,
            max_jwks_bytes: o.optional("maxJwksBytes", u64_value)?,
            token_cache_size: o.optional("tokenCacheSize", u64_value)?,
            identity_cache_size: o.optional("identityCacheSize", u64_value)?,
        })
    }
}

impl RawJwtRule {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawJwtRule> {
        let o = Object::new(
            value,
            path,
            "a jwtRules entry",
            &[
                "issuer",
                "audiences",
                "jwksUri",
                "jwksCluster",
                "jwks",
                "algorithms",
                "fromHeaders",
                "fromParams",
                "fromCookies",
                "forwardOriginalToken",
                "outputPayloadToHeader",
                "outputClaimToHeaders",
                "timeout",
                "cacheDuration",
                "staleIfError",
                "unknownKidRefetchInterval",
            ],
        )?;
        Ok(RawJwtRule {
            issuer: o.required("issuer", string)?,
            audiences: o.or_default("audiences", strings)?,
            jwks_uri: o.optional("jwksUri", string)?,
            jwks_cluster: o.optional("jwksCluster", string)?,
            jwks: o.optional("jwks", string)?,
            algorithms: o.optional("algorithms", strings)?,
            from_headers: o.or_default("fromHeaders", list(RawFromHeader::read))?,
            from_params: o.or_default("fromParams", strings)?,
            from_cookies: o.or_default("fromCookies", strings)?,
            forward_original_token: o.or_default("forwardOriginalToken", boolean)?,
            output_payload_to_header: o.optional("outputPayloadToHeader", string)?,
            output_claim_to_headers: o.or_default("outputClaimToHeaders", list(RawClaimToHeader::read))?,
            timeout: o.optional("timeout", string)?,
            cache_duration: o.optional("cacheDuration", string)?,
            stale_if_error: o.optional("staleIfError", string)?,
            unknown_kid_refetch_interval: o.optional("unknownKidRefetchInterval", string)?,
        })
    }
}

impl RawFromHeader {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawFromHeader> {
        let o = Object::new(value, path, "a fromHeaders entry", &["name", "prefix"])?;
        Ok(RawFromHeader { name: o.required("name", string)?, prefix: o.or_default("prefix", string)? })
    }
}

impl RawClaimToHeader {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawClaimToHeader> {
        let o = Object::new(value, path, "an outputClaimToHeaders entry", &["header", "claim"])?;
        Ok(RawClaimToHeader { header: o.required("header", string)?, claim: o.required("claim", string)? })
    }
}

impl RawPolicy {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawPolicy> {
        let o = Object::new(value, path, "a policy", &["name", "action", "rules", "dryRun"])?;
        Ok(RawPolicy {
            name: o.or_default("name", string)?,
            action: o.optional("action", string)?,
            rules: o.or_default("rules", list(RawRule::read))?,
            dry_run: o.or_default("dryRun", boolean)?,
        })
    }
}

impl RawTokenRequirement {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawTokenRequirement> {
        let o = Object::new(value, path, "a tokenRequirements entry", &["name", "match", "skipValidation", "issuers"])?;
        Ok(RawTokenRequirement {
            name: o.or_default("name", string)?,
            matcher: o.required("match", RawOperation::read)?,
            skip_validation: o.or_default("skipValidation", boolean)?,
            issuers: o.or_default("issuers", strings)?,
        })
    }
}

impl RawRule {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawRule> {
        let o = Object::new(value, path, "a rule", &["from", "to", "when"])?;
        Ok(RawRule {
            from: o.or_default("from", list(RawFrom::read))?,
            to: o.or_default("to", list(RawTo::read))?,
            when: o.or_default("when", list(RawCondition::read))?,
        })
    }
}

impl RawFrom {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawFrom> {
        let o = Object::new(value, path, "a from entry", &["source"])?;
        Ok(RawFrom { source: o.required("source", RawSource::read)? })
    }
}

impl RawSource {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawSource> {
        let o = Object::new(value, path, "a source", &SOURCE_FIELDS)?;
        Ok(RawSource {
            request_principals: o.or_default("requestPrincipals", strings)?,
            not_request_principals: o.or_default("notRequestPrincipals", strings)?,
            ip_blocks: o.or_default("ipBlocks", strings)?,
            not_ip_blocks: o.or_default("notIpBlocks", strings)?,
            remote_ip_blocks: o.or_default("remoteIpBlocks", strings)?,
            not_remote_ip_blocks: o.or_default("notRemoteIpBlocks", strings)?,
            principals: o.or_default("principals", strings)?,
            not_principals: o.or_default("notPrincipals", strings)?,
            namespaces: o.or_default("namespaces", strings)?,
            not_namespaces: o.or_default("notNamespaces", strings)?,
            service_accounts: o.or_default("serviceAccounts", strings)?,
            not_service_accounts: o.or_default("notServiceAccounts", strings)?,
            trust_domains: o.or_default("trustDomains", strings)?,
            not_trust_domains: o.or_default("notTrustDomains", strings)?,
        })
    }
}

impl RawTo {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawTo> {
        let o = Object::new(value, path, "a to entry", &["operation"])?;
        Ok(RawTo { operation: o.required("operation", RawOperation::read)? })
    }
}

impl RawOperation {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawOperation> {
        let o = Object::new(
            value,
            path,
            "an operation",
            &["hosts", "notHosts", "ports", "notPorts", "paths", "notPaths", "methods", "notMethods"],
        )?;
        Ok(RawOperation {
            hosts: o.or_default("hosts", strings)?,
            not_hosts: o.or_default("notHosts", strings)?,
            ports: o.or_default("ports", list(RawPort::read))?,
            not_ports: o.or_default("notPorts", list(RawPort::read))?,
            paths: o.or_default("paths", strings)?,
            not_paths: o.or_default("notPaths", strings)?,
            methods: o.or_default("methods", strings)?,
            not_methods: o.or_default("notMethods", strings)?,
        })
    }
}

impl RawPort {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read(value: &Value, _: &Path<'_>) -> Read<RawPort> {
        match value {
            Value::Number(n) if n.as_u64().is_some() => Ok(RawPort::Number(n.as_u64().unwrap_or_default())),
            Value::String(text) => Ok(RawPort::Text(text.clone())),
            _ => Err("data did not match any variant of untagged enum RawPort".to_string()),
        }
    }
}

impl RawCondition {
    #[inline(never)] // each its own function: see verify_new_token (src/authn/mod.rs)
    fn read<'a>(value: &'a Value, path: &Path<'a>) -> Read<RawCondition> {
        let o = Object::new(value, path, "a when condition", &["key", "values", "notValues"])?;
        Ok(RawCondition {
            key: o.required("key", string)?,
            values: o.or_default("values", strings)?,
            not_values: o.or_default("notValues", strings)?,
        })
    }
}
