//! Compiles `policies`, `tokenRequirements` and their matchers, checking every value once.

use super::raw::{RawOperation, RawPolicy, RawPort, RawRule, RawSource, RawTokenRequirement};
use super::ConfigError;
use crate::authn::Provider;
use crate::authz::{
    Cidr, Condition, ConditionKey, HostMatch, Operation, PathMatch, PeerMatch, Policies, Policy, PrincipalMatch,
    RequirementAction, Rule, Source, StringMatch, TokenRequirement, ValueKind, ValueMatch,
    DEFAULT_SPACE_DELIMITED_CLAIMS,
};
use crate::ids::ProviderId;

/// The field path of the first rule part that reads `source.ip` (the TCP peer).
pub(super) fn first_source_ip_field(policies: &[RawPolicy]) -> Option<String> {
    for (p, policy) in policies.iter().enumerate() {
        for (r, rule) in policy.rules.iter().enumerate() {
            let rule_field = format!("policies[{p}].rules[{r}]");
            for (s, from) in rule.from.iter().enumerate() {
                for (name, blocks) in
                    [("ipBlocks", &from.source.ip_blocks), ("notIpBlocks", &from.source.not_ip_blocks)]
                {
                    if !blocks.is_empty() {
                        return Some(format!("{rule_field}.from[{s}].source.{name}"));
                    }
                }
            }
            if let Some(c) = rule.when.iter().position(|condition| condition.key == "source.ip") {
                return Some(format!("{rule_field}.when[{c}].key"));
            }
        }
    }
    None
}

/// `trust_domains`: the mesh's trust domain and its aliases (a principal in one of them, or in
/// `cluster.local`, matches the same identity in each, as istiod rewrites it).
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
pub(super) fn compile_policies(
    raw: Vec<RawPolicy>,
    extra_space_delimited: Vec<String>,
    trust_domains: &[String],
    errors: &mut Vec<ConfigError>,
) -> Policies {
    let mut policies = Policies::default();
    // Each policy on its own: every wrong one is reported, the first error of each.
    for (index, policy) in raw.into_iter().enumerate() {
        match compile_policy(index, policy, trust_domains) {
            Ok((Action::Allow, compiled)) => policies.allow.push(compiled),
            Ok((Action::Deny, compiled)) => policies.deny.push(compiled),
            Ok((Action::Audit, compiled)) => policies.audit.push(compiled),
            Err(error) => errors.push(error),
        }
    }
    match space_delimited_claims(extra_space_delimited) {
        Ok(claims) => policies.space_delimited_claims = claims,
        Err(error) => errors.push(error),
    }
    policies
}

enum Action {
    Allow,
    Deny,
    Audit,
}

fn compile_policy(index: usize, policy: RawPolicy, trust_domains: &[String]) -> Result<(Action, Policy), ConfigError> {
    let field = format!("policies[{index}]");
    let action = match policy.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" if policy.dry_run => {
            return Err(ConfigError::new(
                format!("{field}.dryRun"),
                "an AUDIT policy changes no decision already; dryRun is for ALLOW and DENY",
            ))
        }
        "AUDIT" => Action::Audit,
        "CUSTOM" => {
            return Err(ConfigError::new(
                format!("{field}.action"),
                "CUSTOM (external authorization) is not supported: expected ALLOW, DENY or AUDIT",
            ))
        }
        other => {
            return Err(ConfigError::new(
                format!("{field}.action"),
                format!(
                    "unsupported action {other_q}: expected ALLOW, DENY or AUDIT",
                    other_q = crate::json::Quoted(other)
                ),
            ))
        }
    };
    let name = if policy.name.is_empty() { field.clone() } else { policy.name };
    let rules = compile_rules(policy.rules, &field, trust_domains)?;
    Ok((action, Policy { name, rules, dry_run: policy.dry_run }))
}

fn space_delimited_claims(extra_space_delimited: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let mut claims: Vec<String> = DEFAULT_SPACE_DELIMITED_CLAIMS.iter().map(|c| c.to_string()).collect();
    for (i, claim) in non_empty(extra_space_delimited, "spaceDelimitedClaims")?.into_iter().enumerate() {
        if claim.contains(['[', ']']) {
            return Err(ConfigError::new(
                format!("spaceDelimitedClaims[{i}]"),
                format!(
                    "{claim_q}: give the claim's name (the innermost one for nested claims)",
                    claim_q = crate::json::Quoted(&claim)
                ),
            ));
        }
        if !claims.contains(&claim) {
            claims.push(claim);
        }
    }
    Ok(claims)
}

#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn compile_rules(raw_rules: Vec<RawRule>, field: &str, trust_domains: &[String]) -> Result<Vec<Rule>, ConfigError> {
    let mut rules = Vec::with_capacity(raw_rules.len());
    for (r, rule) in raw_rules.into_iter().enumerate() {
        let rule_field = format!("{field}.rules[{r}]");
        let mut from = Vec::new();
        for (s, raw) in rule.from.into_iter().enumerate() {
            from.push(compile_source(raw.source, &format!("{rule_field}.from[{s}].source"), trust_domains)?);
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
                values: value_matches(raw.values, kind, &format!("{f}.values"), trust_domains)?,
                not_values: value_matches(raw.not_values, kind, &format!("{f}.notValues"), trust_domains)?,
            });
        }
        rules.push(Rule { from, to, when });
    }
    Ok(rules)
}

#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn compile_source(raw: RawSource, field: &str, trust_domains: &[String]) -> Result<Source, ConfigError> {
    let principals = |values: Vec<String>, name: &str| {
        parsed(values, &format!("{field}.{name}"), |v| PeerMatch::principal(v, trust_domains))
    };
    let peers = |values: Vec<String>, name: &str, parse: fn(&str) -> Result<PeerMatch, String>| {
        parsed(values, &format!("{field}.{name}"), parse)
    };
    Ok(Source {
        principals: principals(raw.principals, "principals")?,
        not_principals: principals(raw.not_principals, "notPrincipals")?,
        namespaces: peers(raw.namespaces, "namespaces", namespace_match)?,
        not_namespaces: peers(raw.not_namespaces, "notNamespaces", namespace_match)?,
        service_accounts: peers(raw.service_accounts, "serviceAccounts", PeerMatch::service_account)?,
        not_service_accounts: peers(raw.not_service_accounts, "notServiceAccounts", PeerMatch::service_account)?,
        trust_domains: parsed(raw.trust_domains, &format!("{field}.trustDomains"), |v| {
            PeerMatch::trust_domain(v, trust_domains)
        })?,
        not_trust_domains: parsed(raw.not_trust_domains, &format!("{field}.notTrustDomains"), |v| {
            PeerMatch::trust_domain(v, trust_domains)
        })?,
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

/// A namespace is a Kubernetes name (Istio quotes everything else into its expression literally;
/// nothing else can name a namespace).
fn namespace_match(value: &str) -> Result<PeerMatch, String> {
    if !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*') {
        return Err(format!(
            "{value_q} is not a Kubernetes namespace (lower-case letters, digits and -, or *)",
            value_q = crate::json::Quoted(value)
        ));
    }
    PeerMatch::namespace(value)
}

#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn compile_operation(raw: RawOperation, field: &str) -> Result<Operation, ConfigError> {
    let hosts = |values: Vec<String>, f: &str| parsed(values, f, HostMatch::parse);
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

#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
pub(super) fn compile_token_requirements(
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
                    let position =
                        providers.iter().position(|p| &p.issuer == issuer).map(ProviderId).ok_or_else(|| {
                            ConfigError::new(
                                &issuer_field,
                                format!(
                                    "{issuer_q} is not the issuer of any jwtRules entry",
                                    issuer_q = crate::json::Quoted(issuer)
                                ),
                            )
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

/// Each value parsed into its matcher; a value that means none is refused with its field path.
/// An empty value anywhere in the list is reported first, as it always was.
fn parsed<T>(
    values: Vec<String>,
    field: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, ConfigError> {
    let values = non_empty(values, field)?;
    // A loop, not `collect` into a `Result`: that adapter is a kilobyte of code for every matcher
    // type this is used with (docs/performance.md, "Footprint").
    let mut out = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        out.push(parse(value).map_err(|reason| ConfigError::new(format!("{field}[{i}]"), reason))?);
    }
    Ok(out)
}

fn string_matches(values: Vec<String>, field: &str) -> Result<Vec<StringMatch>, ConfigError> {
    parsed(values, field, StringMatch::parse)
}

fn principal_matches(values: Vec<String>, field: &str) -> Result<Vec<PrincipalMatch>, ConfigError> {
    // Every value's `*` first, then the principal's own rule (the order of the errors before).
    let values = non_empty(values, field)?;
    parsed(values.clone(), field, StringMatch::parse)?;
    parsed(values, field, PrincipalMatch::parse)
}

fn path_matches(values: Vec<String>, field: &str) -> Result<Vec<PathMatch>, ConfigError> {
    parsed(values, field, PathMatch::parse)
}

fn cidrs(values: Vec<String>, field: &str) -> Result<Vec<Cidr>, ConfigError> {
    let mut out = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        out.push(Cidr::parse(value).map_err(|reason| ConfigError::new(format!("{field}[{i}]"), reason))?);
    }
    Ok(out)
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
                    RawPort::Text(text) => crate::json::Quoted(text).to_string(),
                };
                ConfigError::new(format!("{field}[{i}]"), format!("{shown} is not a port number (0-65535)"))
            })
        })
        .collect()
}

fn value_matches(
    values: Vec<String>,
    kind: ValueKind,
    field: &str,
    trust_domains: &[String],
) -> Result<Vec<ValueMatch>, ConfigError> {
    Ok(match kind {
        ValueKind::PeerPrincipal => parsed(values, field, |v| PeerMatch::principal(v, trust_domains))?
            .into_iter()
            .map(ValueMatch::Peer)
            .collect(),
        ValueKind::PeerNamespace => parsed(values, field, namespace_match)?.into_iter().map(ValueMatch::Peer).collect(),
        ValueKind::String => string_matches(values, field)?.into_iter().map(ValueMatch::String).collect(),
        ValueKind::Principal => principal_matches(values, field)?.into_iter().map(ValueMatch::Principal).collect(),
        ValueKind::Address => cidrs(values, field)?.into_iter().map(ValueMatch::Address).collect(),
        ValueKind::Port => {
            ports(values.into_iter().map(RawPort::Text).collect(), field)?.into_iter().map(ValueMatch::Port).collect()
        }
    })
}
