//! The configuration's JSON shape, as users write it: Istio's field names, nothing compiled yet.

use serde::Deserialize;

// ---------------------------------------------------------------------------------------------
// The JSON shape.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) jwt_rules: Vec<RawJwtRule>,
    #[serde(default)]
    pub(super) policies: Vec<RawPolicy>,
    #[serde(default)]
    pub(super) token_requirements: Vec<RawTokenRequirement>,
    /// Refused: `remote.ip` is Envoy's own client address now (see `RawConnectionManager`).
    pub(super) num_trusted_proxies: Option<u32>,
    pub(super) connection_manager: Option<RawConnectionManager>,
    /// The mesh's trust domain (Istio's meshConfig `trustDomain`), for `trustDomainAliases`.
    pub(super) trust_domain: Option<String>,
    /// Istio's meshConfig `trustDomainAliases`: a principal in the trust domain or one of these
    /// matches the same identity in each.
    #[serde(default)]
    pub(super) trust_domain_aliases: Vec<String>,
    pub(super) unsafe_paths: Option<String>,
    pub(super) signature_backend: Option<String>,
    pub(super) cors_preflight: Option<String>,
    #[serde(default)]
    pub(super) space_delimited_claims: Vec<String>,
    pub(super) limits: Option<RawLimits>,
}

/// The operator's statement of the HTTP connection manager's settings the filter runs behind,
/// with Envoy's field names: they decide what Envoy reports as the client's address.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawConnectionManager {
    pub(super) use_remote_address: bool,
    #[serde(default)]
    pub(super) xff_num_trusted_hops: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_token_bytes: Option<u64>,
    pub(super) max_claim_depth: Option<u64>,
    pub(super) max_jwks_bytes: Option<u64>,
    pub(super) token_cache_size: Option<u64>,
    pub(super) identity_cache_size: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawJwtRule {
    pub(super) issuer: String,
    #[serde(default)]
    pub(super) audiences: Vec<String>,
    pub(super) jwks_uri: Option<String>,
    pub(super) jwks_cluster: Option<String>,
    pub(super) jwks: Option<String>,
    /// Allow-list of JWS algorithms for this issuer (no Istio/Envoy equivalent); all when absent.
    pub(super) algorithms: Option<Vec<String>>,
    #[serde(default)]
    pub(super) from_headers: Vec<RawFromHeader>,
    #[serde(default)]
    pub(super) from_params: Vec<String>,
    #[serde(default)]
    pub(super) from_cookies: Vec<String>,
    #[serde(default)]
    pub(super) forward_original_token: bool,
    pub(super) output_payload_to_header: Option<String>,
    #[serde(default)]
    pub(super) output_claim_to_headers: Vec<RawClaimToHeader>,
    pub(super) timeout: Option<String>,
    pub(super) cache_duration: Option<String>,
    pub(super) stale_if_error: Option<String>,
    pub(super) unknown_kid_refetch_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFromHeader {
    pub(super) name: String,
    #[serde(default)]
    pub(super) prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClaimToHeader {
    pub(super) header: String,
    pub(super) claim: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) action: Option<String>,
    #[serde(default)]
    pub(super) rules: Vec<RawRule>,
    #[serde(default)]
    pub(super) dry_run: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawTokenRequirement {
    #[serde(default)]
    pub(super) name: String,
    #[serde(rename = "match")]
    pub(super) matcher: RawOperation,
    #[serde(default)]
    pub(super) skip_validation: bool,
    #[serde(default)]
    pub(super) issuers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    #[serde(default)]
    pub(super) from: Vec<RawFrom>,
    #[serde(default)]
    pub(super) to: Vec<RawTo>,
    #[serde(default)]
    pub(super) when: Vec<RawCondition>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFrom {
    pub(super) source: RawSource,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawSource {
    #[serde(default)]
    pub(super) request_principals: Vec<String>,
    #[serde(default)]
    pub(super) not_request_principals: Vec<String>,
    #[serde(default)]
    pub(super) ip_blocks: Vec<String>,
    #[serde(default)]
    pub(super) not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub(super) remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub(super) not_remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub(super) principals: Vec<String>,
    #[serde(default)]
    pub(super) not_principals: Vec<String>,
    #[serde(default)]
    pub(super) namespaces: Vec<String>,
    #[serde(default)]
    pub(super) not_namespaces: Vec<String>,
    #[serde(default)]
    pub(super) service_accounts: Vec<String>,
    #[serde(default)]
    pub(super) not_service_accounts: Vec<String>,
    #[serde(default)]
    pub(super) trust_domains: Vec<String>,
    #[serde(default)]
    pub(super) not_trust_domains: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTo {
    pub(super) operation: RawOperation,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawOperation {
    #[serde(default)]
    pub(super) hosts: Vec<String>,
    #[serde(default)]
    pub(super) not_hosts: Vec<String>,
    #[serde(default)]
    pub(super) ports: Vec<RawPort>,
    #[serde(default)]
    pub(super) not_ports: Vec<RawPort>,
    #[serde(default)]
    pub(super) paths: Vec<String>,
    #[serde(default)]
    pub(super) not_paths: Vec<String>,
    #[serde(default)]
    pub(super) methods: Vec<String>,
    #[serde(default)]
    pub(super) not_methods: Vec<String>,
}

/// Istio writes ports as strings (`"8080"`); a JSON number means the same and is accepted.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawPort {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawCondition {
    pub(super) key: String,
    #[serde(default)]
    pub(super) values: Vec<String>,
    #[serde(default)]
    pub(super) not_values: Vec<String>,
}
