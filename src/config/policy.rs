//! Compiles `policies`, `tokenRequirements` and their matchers, checking every value once.

use super::field::Field;
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
    let root = Field::root("policies");
    for (p, policy) in policies.iter().enumerate() {
        let policy_field = root.index(p);
        let rules_field = policy_field.name("rules");
        for (r, rule) in policy.rules.iter().enumerate() {
            let rule_field = rules_field.index(r);
            let from_field = rule_field.name("from");
            for (s, from) in rule.from.iter().enumerate() {
                for (name, blocks) in
                    [("ipBlocks", &from.source.ip_blocks), ("notIpBlocks", &from.source.not_ip_blocks)]
                {
                    if !blocks.is_empty() {
                        let source = from_field.index(s);
                        let source = source.name("source");
                        return Some(source.name(name).render());
                    }
                }
            }
            if let Some(c) = rule.when.iter().position(|condition| condition.key == "source.ip") {
                let when = rule_field.name("when");
                let condition = when.index(c);
                return Some(condition.name("key").render());
            }
        }
    }
    None
}

/// `trust_domains`: the mesh's trust domain and its aliases (a principal in one of them, or in
/// `cluster.local`, matches the same identity in each, as istiod rewrites it).
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
pub(super) fn compile_policies(
    raw: &[RawPolicy],
    extra_space_delimited: &[String],
    trust_domains: &[String],
    errors: &mut Vec<ConfigError>,
) -> Policies {
    let mut policies = Policies::default();
    let root = Field::root("policies");
    // Each policy on its own: every wrong one is reported, the first error of each.
    for (index, policy) in raw.iter().enumerate() {
        match compile_policy(&root.index(index), policy, trust_domains) {
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

fn compile_policy(
    field: &Field<'_>,
    policy: &RawPolicy,
    trust_domains: &[String],
) -> Result<(Action, Policy), ConfigError> {
    let action = match policy.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" if policy.dry_run => {
            return Err(ConfigError::new(
                field.name("dryRun"),
                "an AUDIT policy changes no decision already; dryRun is for ALLOW and DENY",
            ))
        }
        "AUDIT" => Action::Audit,
        "CUSTOM" => {
            return Err(ConfigError::new(
                field.name("action"),
                "CUSTOM (external authorization) is not supported: expected ALLOW, DENY or AUDIT",
            ))
        }
        other => {
            return Err(ConfigError::new(
                field.name("action"),
                format!(
                    "unsupported action {other_q}: expected ALLOW, DENY or AUDIT",
                    other_q = crate::json::Quoted(other)
                ),
            ))
        }
    };
    let name = if policy.name.is_empty() { field.render() } else { policy.name.clone() };
    let rules = compile_rules(&policy.rules, &field.name("rules"), trust_domains)?;
    Ok((action, Policy { name, rules, dry_run: policy.dry_run }))
}

fn space_delimited_claims(extra_space_delimited: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut claims: Vec<String> = DEFAULT_SPACE_DELIMITED_CLAIMS.iter().map(|c| c.to_string()).collect();
    let field = Field::root("spaceDelimitedClaims");
    for (i, claim) in non_empty(extra_space_delimited, &field)?.iter().enumerate() {
        if claim.contains(['[', ']']) {
            return Err(ConfigError::new(
                field.index(i),
                format!(
                    "{claim_q}: give the claim's name (the innermost one for nested claims)",
                    claim_q = crate::json::Quoted(claim)
                ),
            ));
        }
        if !claims.contains(claim) {
            claims.push(claim.clone());
        }
    }
    Ok(claims)
}

/// `field` is the rules list (`policies[0].rules`).
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn compile_rules(raw_rules: &[RawRule], field: &Field<'_>, trust_domains: &[String]) -> Result<Vec<Rule>, ConfigError> {
    let mut rules = Vec::with_capacity(raw_rules.len());
    for (r, rule) in raw_rules.iter().enumerate() {
        let rule_field = field.index(r);
        let mut compiled = Rule { from: Vec::new(), to: Vec::new(), when: Vec::new() };
        let from_field = rule_field.name("from");
        for (s, raw) in rule.from.iter().enumerate() {
            compiled.from.push(compile_source(&raw.source, &from_field.index(s).name("source"), trust_domains)?);
        }
        let to_field = rule_field.name("to");
        for (o, raw) in rule.to.iter().enumerate() {
            compiled.to.push(compile_operation(&raw.operation, &to_field.index(o).name("operation"))?);
        }
        let when_field = rule_field.name("when");
        for (c, raw) in rule.when.iter().enumerate() {
            let f = when_field.index(c);
            let key = ConditionKey::parse(&raw.key).map_err(|reason| ConfigError::new(f.name("key"), reason))?;
            if raw.values.is_empty() && raw.not_values.is_empty() {
                return Err(ConfigError::new(f, "at least one of values or notValues is required"));
            }
            let kind = key.value_kind();
            let values = value_matches(&raw.values, kind, &f.name("values"), trust_domains)?;
            let not_values = value_matches(&raw.not_values, kind, &f.name("notValues"), trust_domains)?;
            compiled.when.push(Condition { key, values, not_values });
        }
        rules.push(compiled);
    }
    Ok(rules)
}

/// Each field in the order its errors have always been reported in, each result stored in place:
/// the one value under construction is all an error drops (a struct literal of `?`s drops a
/// different set of finished fields at each of its exits, several kilobytes of code here).
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
#[allow(clippy::field_reassign_with_default)] // on purpose: see above
fn compile_source(raw: &RawSource, field: &Field<'_>, trust_domains: &[String]) -> Result<Source, ConfigError> {
    let principal = |v: &str| PeerMatch::principal(v, trust_domains);
    let trust_domain = |v: &str| PeerMatch::trust_domain(v, trust_domains);
    let mut source = Source::default();
    source.principals = parsed(&raw.principals, &field.name("principals"), principal)?;
    source.not_principals = parsed(&raw.not_principals, &field.name("notPrincipals"), principal)?;
    source.namespaces = parsed(&raw.namespaces, &field.name("namespaces"), namespace_match)?;
    source.not_namespaces = parsed(&raw.not_namespaces, &field.name("notNamespaces"), namespace_match)?;
    source.service_accounts =
        parsed(&raw.service_accounts, &field.name("serviceAccounts"), PeerMatch::service_account)?;
    source.not_service_accounts =
        parsed(&raw.not_service_accounts, &field.name("notServiceAccounts"), PeerMatch::service_account)?;
    source.trust_domains = parsed(&raw.trust_domains, &field.name("trustDomains"), trust_domain)?;
    source.not_trust_domains = parsed(&raw.not_trust_domains, &field.name("notTrustDomains"), trust_domain)?;
    source.request_principals = principal_matches(&raw.request_principals, &field.name("requestPrincipals"))?;
    source.not_request_principals =
        principal_matches(&raw.not_request_principals, &field.name("notRequestPrincipals"))?;
    source.ip_blocks = cidrs(&raw.ip_blocks, &field.name("ipBlocks"))?;
    source.not_ip_blocks = cidrs(&raw.not_ip_blocks, &field.name("notIpBlocks"))?;
    source.remote_ip_blocks = cidrs(&raw.remote_ip_blocks, &field.name("remoteIpBlocks"))?;
    source.not_remote_ip_blocks = cidrs(&raw.not_remote_ip_blocks, &field.name("notRemoteIpBlocks"))?;
    Ok(source)
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

/// As `compile_source`: each result stored in place.
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
#[allow(clippy::field_reassign_with_default)] // on purpose: see compile_source
fn compile_operation(raw: &RawOperation, field: &Field<'_>) -> Result<Operation, ConfigError> {
    let mut operation = Operation::default();
    operation.hosts = parsed(&raw.hosts, &field.name("hosts"), HostMatch::parse)?;
    operation.not_hosts = parsed(&raw.not_hosts, &field.name("notHosts"), HostMatch::parse)?;
    operation.ports = ports(&raw.ports, &field.name("ports"))?;
    operation.not_ports = ports(&raw.not_ports, &field.name("notPorts"))?;
    operation.methods = parsed(&raw.methods, &field.name("methods"), StringMatch::parse)?;
    operation.not_methods = parsed(&raw.not_methods, &field.name("notMethods"), StringMatch::parse)?;
    operation.paths = parsed(&raw.paths, &field.name("paths"), PathMatch::parse)?;
    operation.not_paths = parsed(&raw.not_paths, &field.name("notPaths"), PathMatch::parse)?;
    Ok(operation)
}

#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
pub(super) fn compile_token_requirements(
    raw: &[RawTokenRequirement],
    providers: &[Provider],
) -> Result<Vec<TokenRequirement>, ConfigError> {
    let mut requirements = Vec::with_capacity(raw.len());
    let root = Field::root("tokenRequirements");
    for (index, requirement) in raw.iter().enumerate() {
        let field = root.index(index);
        let matcher = compile_operation(&requirement.matcher, &field.name("match"))?;
        let action = match (requirement.skip_validation, requirement.issuers.is_empty()) {
            (true, true) => RequirementAction::SkipValidation,
            (false, false) => {
                let mut indices = Vec::new();
                let issuers_field = field.name("issuers");
                for (i, issuer) in requirement.issuers.iter().enumerate() {
                    if issuer.trim().is_empty() {
                        return Err(ConfigError::new(issuers_field.index(i), "must not be empty"));
                    }
                    let Some(position) = providers.iter().position(|p| &p.issuer == issuer).map(ProviderId) else {
                        return Err(ConfigError::new(
                            issuers_field.index(i),
                            format!(
                                "{issuer_q} is not the issuer of any jwtRules entry",
                                issuer_q = crate::json::Quoted(issuer)
                            ),
                        ));
                    };
                    if !indices.contains(&position) {
                        indices.push(position);
                    }
                }
                RequirementAction::RequireIssuers(indices)
            }
            (true, false) => {
                return Err(ConfigError::new(
                    field.name("issuers"),
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
        let name = if requirement.name.is_empty() { field.render() } else { requirement.name.clone() };
        requirements.push(TokenRequirement { name, matcher, action });
    }
    Ok(requirements)
}

fn non_empty<'v>(values: &'v [String], field: &Field<'_>) -> Result<&'v [String], ConfigError> {
    match values.iter().position(String::is_empty) {
        Some(i) => Err(ConfigError::new(field.index(i), "must not be empty")),
        None => Ok(values),
    }
}

/// Each value parsed into its matcher; a value that means none is refused with its field path.
/// An empty value anywhere in the list is reported first, as it always was.
fn parsed<T>(
    values: &[String],
    field: &Field<'_>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, ConfigError> {
    each(non_empty(values, field)?, field, parse)
}

/// Each value parsed, the first refusal reported at its index.
fn each<T>(
    values: &[String],
    field: &Field<'_>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, ConfigError> {
    // A loop, not `collect` into a `Result`: that adapter is a kilobyte of code for every matcher
    // type this is used with (docs/performance.md, "Footprint").
    let mut out = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        out.push(parse(value).map_err(|reason| ConfigError::new(field.index(i), reason))?);
    }
    Ok(out)
}

fn principal_matches(values: &[String], field: &Field<'_>) -> Result<Vec<PrincipalMatch>, ConfigError> {
    // Every value's `*` first, then the principal's own rule (the order of the errors before).
    parsed(values, field, StringMatch::parse)?;
    parsed(values, field, PrincipalMatch::parse)
}

/// Addresses have no empty-value check of their own: an empty one is not an address, and says so.
fn cidrs(values: &[String], field: &Field<'_>) -> Result<Vec<Cidr>, ConfigError> {
    each(values, field, Cidr::parse)
}

fn ports(values: &[RawPort], field: &Field<'_>) -> Result<Vec<u16>, ConfigError> {
    let mut out = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        let port = match value {
            RawPort::Number(n) => u16::try_from(*n).ok(),
            RawPort::Text(text) => port_text(text),
        };
        let Some(port) = port else {
            let shown = match value {
                RawPort::Number(n) => n.to_string(),
                RawPort::Text(text) => crate::json::Quoted(text).to_string(),
            };
            return Err(ConfigError::new(field.index(i), format!("{shown} is not a port number (0-65535)")));
        };
        out.push(port);
    }
    Ok(out)
}

/// Decimal digits only (no sign, no spaces) and within 0-65535.
fn port_text(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn value_matches(
    values: &[String],
    kind: ValueKind,
    field: &Field<'_>,
    trust_domains: &[String],
) -> Result<Vec<ValueMatch>, ConfigError> {
    Ok(match kind {
        ValueKind::PeerPrincipal => {
            parsed(values, field, |v| PeerMatch::principal(v, trust_domains).map(ValueMatch::Peer))?
        }
        ValueKind::PeerNamespace => parsed(values, field, |v| namespace_match(v).map(ValueMatch::Peer))?,
        ValueKind::String => parsed(values, field, |v| StringMatch::parse(v).map(ValueMatch::String))?,
        ValueKind::Principal => {
            parsed(values, field, StringMatch::parse)?;
            parsed(values, field, |v| PrincipalMatch::parse(v).map(ValueMatch::Principal))?
        }
        ValueKind::Address => each(values, field, |v| Cidr::parse(v).map(ValueMatch::Address))?,
        ValueKind::Port => {
            let mut out = Vec::with_capacity(values.len());
            for (i, value) in values.iter().enumerate() {
                let Some(port) = port_text(value) else {
                    return Err(ConfigError::new(
                        field.index(i),
                        format!("{} is not a port number (0-65535)", crate::json::Quoted(value)),
                    ));
                };
                out.push(ValueMatch::Port(port));
            }
            out
        }
    })
}
