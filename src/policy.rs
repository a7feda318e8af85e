//! Policy matching: Istio AuthorizationPolicy semantics over the normalized request and identity.
//!
//! Order and meaning follow Istio: DENY policies first (any match denies); then, if no ALLOW
//! policy exists the request is allowed, otherwise it is allowed only when some ALLOW rule
//! matches. AUDIT policies never change the decision: a match is reported. Dry-run policies are
//! evaluated but not enforced: what enforcing them would have changed is reported.
//! A rule matches when one of its `from`, one of its `to` and all of its `when` match; an absent
//! (or empty) part matches anything, as an unset repeated field does in Istio. A policy without
//! rules matches nothing (an ALLOW policy without rules allows nothing); a rule `{}` matches all.
//! An attribute the request does not have (no token, no port) matches no value and no `not*`.

use crate::cidr::Cidr;
use crate::path::PathTemplate;
use serde_json::{Map, Value};
use std::net::IpAddr;

#[derive(Debug, Default)]
pub struct Policies {
    pub deny: Vec<Policy>,
    pub allow: Vec<Policy>,
    pub audit: Vec<Policy>,
    /// Claims whose string value is a space-delimited list (`scope`, `permission`, and any
    /// configured in `spaceDelimitedClaims`), compared by the innermost claim name.
    pub space_delimited_claims: Vec<String>,
}

/// The connection attributes some rule reads. The host asks Envoy for each only when one does:
/// every property read is a call out of the VM and a copy, on every request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionReads {
    /// `destination.port` (`ports`, `notPorts`, the `destination.port` key).
    pub destination_port: bool,
    /// `source.address` (`ipBlocks`, `remoteIpBlocks` and their keys: without `X-Forwarded-For`
    /// the remote address is the peer's).
    pub source_address: bool,
}

impl ConnectionReads {
    /// What `policies` and `requirements` read, whatever the request.
    pub fn of(policies: &Policies, requirements: &[TokenRequirement]) -> ConnectionReads {
        let mut reads = ConnectionReads::default();
        let rules = policies.deny.iter().chain(&policies.allow).chain(&policies.audit).flat_map(|p| &p.rules);
        for rule in rules {
            rule.from.iter().for_each(|source| reads.add_source(source));
            rule.to.iter().for_each(|operation| reads.add_operation(operation));
            rule.when.iter().for_each(|condition| reads.add_key(&condition.key));
        }
        requirements.iter().for_each(|requirement| reads.add_operation(&requirement.matcher));
        reads
    }

    // The destructuring below is exhaustive on purpose: a new field that reads the connection must
    // be added here, or it would always see "unknown".
    fn add_source(&mut self, source: &Source) {
        let Source {
            request_principals: _,
            not_request_principals: _,
            ip_blocks,
            not_ip_blocks,
            remote_ip_blocks,
            not_remote_ip_blocks,
        } = source;
        self.source_address |=
            [ip_blocks, not_ip_blocks, remote_ip_blocks, not_remote_ip_blocks].iter().any(|blocks| !blocks.is_empty());
    }

    fn add_operation(&mut self, operation: &Operation) {
        let Operation { hosts: _, not_hosts: _, ports, not_ports, methods: _, not_methods: _, paths: _, not_paths: _ } =
            operation;
        self.destination_port |= !ports.is_empty() || !not_ports.is_empty();
    }

    fn add_key(&mut self, key: &ConditionKey) {
        match key {
            ConditionKey::SourceIp | ConditionKey::RemoteIp => self.source_address = true,
            ConditionKey::DestinationPort => self.destination_port = true,
            ConditionKey::Claim(_)
            | ConditionKey::Principal
            | ConditionKey::Audiences
            | ConditionKey::Presenter
            | ConditionKey::Header(_) => {}
        }
    }
}

#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub rules: Vec<Rule>,
    /// Evaluated and reported, never enforced (Istio's `istio.io/dry-run` annotation).
    pub dry_run: bool,
}

#[derive(Debug, Default)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

/// Istio's `Source`, for what a request carries: its JWT identity and its addresses. (Peer
/// certificate identities, `principals` and `namespaces`, need mTLS and are refused by config.)
#[derive(Debug, Default)]
pub struct Source {
    pub request_principals: Vec<PrincipalMatch>,
    pub not_request_principals: Vec<PrincipalMatch>,
    pub ip_blocks: Vec<Cidr>,
    pub not_ip_blocks: Vec<Cidr>,
    pub remote_ip_blocks: Vec<Cidr>,
    pub not_remote_ip_blocks: Vec<Cidr>,
}

/// Istio's `Operation`; also the `match` of a token requirement.
#[derive(Debug, Default)]
pub struct Operation {
    pub hosts: Vec<HostMatch>,
    pub not_hosts: Vec<HostMatch>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    pub methods: Vec<StringMatch>,
    pub not_methods: Vec<StringMatch>,
    pub paths: Vec<PathMatch>,
    pub not_paths: Vec<PathMatch>,
}

#[derive(Debug)]
pub struct Condition {
    pub key: ConditionKey,
    pub values: Vec<ValueMatch>,
    pub not_values: Vec<ValueMatch>,
}

/// The attribute a `when` condition reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionKey {
    /// `request.auth.claims[a][b]`.
    Claim(ClaimPath),
    /// `request.auth.principal`: `iss/sub`, matched as `requestPrincipals` are.
    Principal,
    /// `request.auth.audiences`.
    Audiences,
    /// `request.auth.presenter`: `azp`.
    Presenter,
    /// `request.headers[name]`.
    Header(String),
    /// `source.ip`: the connection's peer.
    SourceIp,
    /// `remote.ip`: the client, from `X-Forwarded-For` and `numTrustedProxies`.
    RemoteIp,
    /// `destination.port`: the port the connection came in on.
    DestinationPort,
}

/// How a condition's values are written, by key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    String,
    Principal,
    Address,
    Port,
}

impl ConditionKey {
    /// Parses a `when` key; unknown keys are an error (Istio would ignore the rule).
    pub fn parse(key: &str) -> Result<ConditionKey, String> {
        match key {
            "request.auth.principal" => return Ok(ConditionKey::Principal),
            "request.auth.audiences" => return Ok(ConditionKey::Audiences),
            "request.auth.presenter" => return Ok(ConditionKey::Presenter),
            "source.ip" => return Ok(ConditionKey::SourceIp),
            "remote.ip" => return Ok(ConditionKey::RemoteIp),
            "destination.port" => return Ok(ConditionKey::DestinationPort),
            _ => {}
        }
        if let Some(rest) = key.strip_prefix("request.auth.claims") {
            return ClaimPath::bracketed(rest)
                .map(ConditionKey::Claim)
                .ok_or_else(|| format!("{key:?}: expected request.auth.claims[name] or request.auth.claims[a][b]"));
        }
        if let Some(rest) = key.strip_prefix("request.headers[") {
            return match rest.strip_suffix(']') {
                Some(name) if !name.is_empty() && !name.contains(['[', ']']) => {
                    Ok(ConditionKey::Header(name.to_ascii_lowercase()))
                }
                _ => Err(format!("{key:?}: expected request.headers[name]")),
            };
        }
        let why = match key {
            "source.principal" | "source.namespace" => " (it is the mTLS peer identity, which this filter cannot see)",
            "destination.ip" | "connection.sni" => " (not available to this filter)",
            _ => "",
        };
        Err(format!(
            "unsupported key {key:?}{why}: supported are request.auth.claims[...], request.auth.principal, \
             request.auth.audiences, request.auth.presenter, request.headers[...], source.ip, remote.ip and \
             destination.port"
        ))
    }

    pub fn value_kind(&self) -> ValueKind {
        match self {
            ConditionKey::Principal => ValueKind::Principal,
            ConditionKey::SourceIp | ConditionKey::RemoteIp => ValueKind::Address,
            ConditionKey::DestinationPort => ValueKind::Port,
            ConditionKey::Claim(_) | ConditionKey::Audiences | ConditionKey::Presenter | ConditionKey::Header(_) => {
                ValueKind::String
            }
        }
    }
}

/// One value of a condition, compiled for its key's kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    String(StringMatch),
    Principal(PrincipalMatch),
    Address(Cidr),
    Port(u16),
}

/// A path into the claims: `[realm_access][roles]` is `["realm_access", "roles"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    pub segments: Vec<String>,
}

impl ClaimPath {
    /// Parses `[a][b][c]`.
    pub fn bracketed(text: &str) -> Option<ClaimPath> {
        let mut segments = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let inner = rest.strip_prefix('[')?;
            let (segment, after) = inner.split_once(']')?;
            if segment.is_empty() || segment.contains('[') {
                return None;
            }
            segments.push(segment.to_string());
            rest = after;
        }
        (!segments.is_empty()).then_some(ClaimPath { segments })
    }

    /// A claim name that may use dots for nesting (`realm_access.roles`).
    pub fn dotted(text: &str) -> ClaimPath {
        ClaimPath { segments: vec![text.to_string()] }
    }

    /// Finds the claim. A single segment with dots is first looked up as a literal claim name
    /// (claims such as `https://example.com/roles` exist), then as a dotted path into nested
    /// objects, which is how older Istio and Keycloak examples write `realm_access.roles`.
    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.segments.split_first()?;
        if let Some(value) = claims.get(first) {
            return rest.iter().try_fold(value, |v, segment| v.get(segment.as_str()));
        }
        if !rest.is_empty() || !first.contains('.') {
            return None;
        }
        let mut parts = first.split('.');
        let top = claims.get(parts.next()?)?;
        parts.try_fold(top, |v, segment| v.get(segment))
    }

    /// Name of the innermost claim, which decides whether it is space-delimited.
    fn leaf(&self) -> &str {
        let last = self.segments.last().map(String::as_str).unwrap_or_default();
        if self.segments.len() == 1 {
            last.rsplit('.').next().unwrap_or(last)
        } else {
            last
        }
    }
}

/// The claims space-delimited when nothing else is configured: RFC 8693 §4.2 `scope`, and
/// `permission` as Keycloak's authorization services write it (Istio's defaults too).
pub const DEFAULT_SPACE_DELIMITED_CLAIMS: [&str; 2] = ["scope", "permission"];

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` (any non-empty value). Config refuses
/// any other use of `*`, so there is never a question which one is meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl StringMatch {
    pub fn parse(value: &str) -> StringMatch {
        if value == "*" {
            StringMatch::Present
        } else if let Some(suffix) = value.strip_prefix('*') {
            StringMatch::Suffix(suffix.to_string())
        } else if let Some(prefix) = value.strip_suffix('*') {
            StringMatch::Prefix(prefix.to_string())
        } else {
            StringMatch::Exact(value.to_string())
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(exact) => value == exact,
            StringMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StringMatch::Suffix(suffix) => value.ends_with(suffix.as_str()),
            StringMatch::Present => !value.is_empty(),
        }
    }
}

/// A `hosts` entry, compared case-insensitively (RFC 4343; CVE-2021-39155). An entry without a
/// port also matches the host with any port (`shop.example` matches `shop.example:8443`), the way
/// routing treats it: Istio compares the raw authority, so `hosts: [h]` there misses `h:port` and a
/// DENY on it can be sidestepped by adding a port. An entry with a port matches only that port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMatch(StringMatch);

impl HostMatch {
    pub fn parse(value: &str) -> HostMatch {
        HostMatch(StringMatch::parse(&value.to_ascii_lowercase()))
    }

    /// `authority` is lower-case already.
    fn matches(&self, authority: &str) -> bool {
        self.0.matches(authority) || host_without_port(authority).is_some_and(|host| self.0.matches(host))
    }
}

/// `shop.example:8443` → `shop.example`, `[::1]:80` → `[::1]`; `None` when there is no port.
fn host_without_port(authority: &str) -> Option<&str> {
    let (host, port) = if authority.starts_with('[') {
        let close = authority.find("]:")?;
        (authority.get(..=close)?, authority.get(close + 2..)?)
    } else {
        authority.rsplit_once(':')?
    };
    (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())).then_some(host)
}

/// A `paths` entry: Istio's string match, or a template with `{*}` / `{**}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    String(StringMatch),
    Template(PathTemplate),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::String(string) => string.matches(path),
            PathMatch::Template(template) => template.matches(path),
        }
    }
}

/// A request principal pattern, split at its last `/` into issuer and subject as Istio does since
/// it matches them as two JWT claims: `https://idp/realms/shop/*` is issuer exactly
/// `https://idp/realms/shop` with any subject, not every issuer that starts with that text.
/// `*` alone is any issuer and subject; without a `/`, a `prefix*` is on the issuer and a
/// `*suffix` on the subject; a value without `*` or `/` is an issuer with an empty subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalMatch {
    issuer: StringMatch,
    subject: StringMatch,
}

impl PrincipalMatch {
    pub fn parse(value: &str) -> PrincipalMatch {
        let split = value.rfind('/').and_then(|slash| Some((value.get(..slash)?, value.get(slash + 1..)?)));
        let (issuer, subject) = if value == "*" {
            (StringMatch::Present, StringMatch::Present)
        } else if let Some(suffix) = value.strip_prefix('*') {
            match split {
                Some(("*", subject)) => (StringMatch::Present, StringMatch::Exact(subject.to_string())),
                Some((issuer, subject)) => (
                    StringMatch::Suffix(issuer.trim_start_matches('*').to_string()),
                    StringMatch::Exact(subject.to_string()),
                ),
                None => (StringMatch::Present, StringMatch::Suffix(suffix.to_string())),
            }
        } else if let Some(prefix) = value.strip_suffix('*') {
            match split {
                Some((issuer, "*")) => (StringMatch::Exact(issuer.to_string()), StringMatch::Present),
                Some((issuer, subject)) => (
                    StringMatch::Exact(issuer.to_string()),
                    StringMatch::Prefix(subject.trim_end_matches('*').to_string()),
                ),
                None => (StringMatch::Prefix(prefix.to_string()), StringMatch::Present),
            }
        } else {
            match split {
                Some((issuer, subject)) => {
                    (StringMatch::Exact(issuer.to_string()), StringMatch::Exact(subject.to_string()))
                }
                None => (StringMatch::Exact(value.to_string()), StringMatch::Exact(String::new())),
            }
        };
        PrincipalMatch { issuer, subject }
    }

    /// A token without a string `sub` matches no principal, not even one with an empty subject.
    fn matches(&self, identity: &Identity) -> bool {
        let subject = identity.claims.get("sub").and_then(Value::as_str);
        self.issuer.matches(&identity.issuer) && subject.is_some_and(|subject| self.subject.matches(subject))
    }
}

/// The authenticated caller, as policies see it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub claims: Map<String, Value>,
}

impl Identity {
    /// Istio's request principal: `<iss>/<sub>`.
    pub fn principal(&self) -> String {
        format!("{}/{}", self.issuer, self.subject)
    }
}

/// What policies match on.
#[derive(Debug, Clone, Copy)]
pub struct MatchInput<'a> {
    /// Normalized path, without query.
    pub path: &'a str,
    pub method: &'a str,
    /// `:authority` as received.
    pub host: &'a str,
    /// The connection's destination port (`destination.port`), when the host reports it.
    pub port: Option<u16>,
    /// The connection's peer address (`source.ip`).
    pub source_ip: Option<IpAddr>,
    /// The client address (`remote.ip`).
    pub remote_ip: Option<IpAddr>,
    pub headers: &'a [(String, String)],
    pub identity: Option<&'a Identity>,
}

/// The outcome of policy evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyDecision {
    Allow,
    /// Denied: by the named DENY policy, or (`None`) because no ALLOW policy matched.
    Deny {
        policy: Option<String>,
    },
}

/// Something to log and count that does not change the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyNote {
    /// The named AUDIT policy matched.
    Audited { policy: String },
    /// Enforcing the dry-run policies would deny this allowed request: by the named dry-run DENY
    /// policy, or (`None`) because no ALLOW policy, dry-run ones included, would match.
    DryRunWouldDeny { policy: Option<String> },
    /// Enforcing the dry-run policies would allow this denied request: the named dry-run ALLOW
    /// policy matches.
    DryRunWouldAllow { policy: String },
}

/// The decision and what to report about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub decision: PolicyDecision,
    pub notes: Vec<PolicyNote>,
}

impl Policies {
    pub fn evaluate(&self, input: &MatchInput<'_>) -> Evaluation {
        let context = Context {
            input,
            host: input.host.to_ascii_lowercase(),
            space_delimited_claims: &self.space_delimited_claims,
        };
        let decision = self.decide(&context, false);
        let mut notes: Vec<PolicyNote> = self
            .audit
            .iter()
            .filter(|policy| policy.matches(&context))
            .map(|policy| PolicyNote::Audited { policy: policy.name.clone() })
            .collect();
        if self.deny.iter().chain(&self.allow).any(|policy| policy.dry_run) {
            match (&decision, self.decide(&context, true)) {
                (PolicyDecision::Allow, PolicyDecision::Deny { policy }) => {
                    notes.push(PolicyNote::DryRunWouldDeny { policy });
                }
                (PolicyDecision::Deny { .. }, PolicyDecision::Allow) => {
                    if let Some(policy) = self.allow.iter().find(|p| p.dry_run && p.matches(&context)) {
                        notes.push(PolicyNote::DryRunWouldAllow { policy: policy.name.clone() });
                    }
                }
                _ => {}
            }
        }
        Evaluation { decision, notes }
    }

    /// Istio's order over the enforced policies (and the dry-run ones with `include_dry_run`).
    fn decide(&self, context: &Context<'_>, include_dry_run: bool) -> PolicyDecision {
        let counts = |policy: &&Policy| include_dry_run || !policy.dry_run;
        if let Some(policy) = self.deny.iter().filter(counts).find(|p| p.matches(context)) {
            return PolicyDecision::Deny { policy: Some(policy.name.clone()) };
        }
        let mut allow = self.allow.iter().filter(counts).peekable();
        if allow.peek().is_none() || allow.any(|p| p.matches(context)) {
            PolicyDecision::Allow
        } else {
            PolicyDecision::Deny { policy: None }
        }
    }
}

struct Context<'a> {
    input: &'a MatchInput<'a>,
    /// `:authority`, lower-case.
    host: String,
    space_delimited_claims: &'a [String],
}

impl Policy {
    fn matches(&self, context: &Context<'_>) -> bool {
        self.rules.iter().any(|rule| rule.matches(context))
    }
}

impl Rule {
    fn matches(&self, context: &Context<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(context)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(context)))
            && self.when.iter().all(|c| c.matches(context))
    }
}

/// Istio's `values` / `notValues` over an attribute's values: an unset `values` matches anything,
/// a set one needs a match; `not_values` must not match. An absent attribute has no values.
fn included_and_not_excluded<M, A>(
    values: &[M],
    not_values: &[M],
    attribute: &[A],
    matches: impl Fn(&M, &A) -> bool,
) -> bool {
    let hit = |list: &[M]| attribute.iter().any(|a| list.iter().any(|m| matches(m, a)));
    (values.is_empty() || hit(values)) && !hit(not_values)
}

impl Source {
    fn matches(&self, context: &Context<'_>) -> bool {
        let input = context.input;
        let identity = input.identity.as_slice();
        let source_ip = input.source_ip.as_slice();
        let remote_ip = input.remote_ip.as_slice();
        included_and_not_excluded(&self.request_principals, &self.not_request_principals, identity, |m, id| {
            m.matches(id)
        }) && included_and_not_excluded(&self.ip_blocks, &self.not_ip_blocks, source_ip, |block, ip| {
            block.contains(*ip)
        }) && included_and_not_excluded(&self.remote_ip_blocks, &self.not_remote_ip_blocks, remote_ip, |block, ip| {
            block.contains(*ip)
        })
    }
}

impl Operation {
    /// Public for token requirements, which match requests the way operations do.
    pub fn matches_request(&self, input: &MatchInput<'_>) -> bool {
        let context = Context { input, host: input.host.to_ascii_lowercase(), space_delimited_claims: &[] };
        self.matches(&context)
    }

    fn matches(&self, context: &Context<'_>) -> bool {
        let input = context.input;
        let host = [context.host.as_str()];
        let port = input.port.as_slice();
        included_and_not_excluded(&self.hosts, &self.not_hosts, &host, |m, h| m.matches(h))
            && included_and_not_excluded(&self.ports, &self.not_ports, port, |want, got| want == got)
            && included_and_not_excluded(&self.methods, &self.not_methods, &[input.method], |m, method| {
                m.matches(method)
            })
            && included_and_not_excluded(&self.paths, &self.not_paths, &[input.path], |m, path| m.matches(path))
    }
}

/// A per-path authentication requirement (`tokenRequirements`): the first whose `match` matches
/// the request decides how its tokens are treated; with none, tokens are optional and every token
/// present is validated (Istio's RequestAuthentication).
#[derive(Debug)]
pub struct TokenRequirement {
    pub name: String,
    pub matcher: Operation,
    pub action: RequirementAction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequirementAction {
    /// Tokens are neither looked for nor validated: the request is anonymous (health checks).
    SkipValidation,
    /// A valid token from one of these providers (indices into `Config::providers`) is required,
    /// looked for only where they accept tokens; a missing one is 401 whatever the policies say.
    RequireIssuers(Vec<usize>),
}

/// One value of an attribute, as conditions compare it.
enum Attribute<'a> {
    Text(String),
    Identity(&'a Identity),
    Address(IpAddr),
    Port(u16),
}

impl ValueMatch {
    fn matches(&self, attribute: &Attribute<'_>) -> bool {
        match (self, attribute) {
            (ValueMatch::String(m), Attribute::Text(text)) => m.matches(text),
            (ValueMatch::Principal(m), Attribute::Identity(identity)) => m.matches(identity),
            (ValueMatch::Address(block), Attribute::Address(address)) => block.contains(*address),
            (ValueMatch::Port(want), Attribute::Port(got)) => want == got,
            _ => false,
        }
    }
}

impl Condition {
    fn matches(&self, context: &Context<'_>) -> bool {
        let attribute = self.attribute(context);
        included_and_not_excluded(&self.values, &self.not_values, &attribute, ValueMatch::matches)
    }

    /// Every value the attribute has for this request; an absent attribute has none.
    fn attribute<'a>(&self, context: &Context<'a>) -> Vec<Attribute<'a>> {
        let input = context.input;
        let identity = input.identity;
        let texts = |values: Vec<String>| values.into_iter().map(Attribute::Text).collect();
        match &self.key {
            ConditionKey::Principal => identity.map(Attribute::Identity).into_iter().collect(),
            ConditionKey::Audiences => texts(
                identity
                    .map(|id| crate::claims::token_audiences(&id.claims).map(str::to_string).collect())
                    .unwrap_or_default(),
            ),
            ConditionKey::Presenter => texts(
                identity.and_then(|id| id.claims.get("azp")).map(|azp| claim_values(azp, false)).unwrap_or_default(),
            ),
            ConditionKey::Claim(path) => texts(
                identity
                    .and_then(|id| path.lookup(&id.claims))
                    .map(|value| {
                        let leaf = path.leaf();
                        claim_values(value, context.space_delimited_claims.iter().any(|claim| claim == leaf))
                    })
                    .unwrap_or_default(),
            ),
            ConditionKey::Header(name) => texts(header_values(input.headers, name)),
            ConditionKey::SourceIp => input.source_ip.map(Attribute::Address).into_iter().collect(),
            ConditionKey::RemoteIp => input.remote_ip.map(Attribute::Address).into_iter().collect(),
            ConditionKey::DestinationPort => input.port.map(Attribute::Port).into_iter().collect(),
        }
    }
}

/// A header's values as conditions see them: each occurrence whole, and each comma-separated
/// element of it. Istio matches elements of the comma-joined value the same way; a DENY on
/// `admin` must not be sidestepped by sending `x-role: user, admin` or two `x-role` lines.
fn header_values(headers: &[(String, String)], name: &str) -> Vec<String> {
    let mut values = Vec::new();
    for (_, value) in headers.iter().filter(|(n, _)| n == name) {
        values.push(value.clone());
        if value.contains(',') {
            values.extend(value.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_string));
        }
    }
    values
}

/// The strings a claim value offers for matching: a string (split on spaces for space-delimited
/// claims), each element of a list, and numbers and booleans by their JSON text.
pub fn claim_values(value: &Value, space_delimited: bool) -> Vec<String> {
    match value {
        Value::String(s) if space_delimited => s.split(' ').filter(|p| !p.is_empty()).map(str::to_string).collect(),
        Value::String(s) => vec![s.clone()],
        Value::Number(_) | Value::Bool(_) => vec![value.to_string()],
        Value::Array(items) => items
            .iter()
            .flat_map(|item| match item {
                Value::Array(_) | Value::Object(_) | Value::Null => Vec::new(),
                other => claim_values(other, false),
            })
            .collect(),
        Value::Object(_) | Value::Null => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ISS: &str = "https://idp/realms/shop";

    fn identity(claims: Value) -> Identity {
        let Value::Object(mut claims) = claims else { panic!("object") };
        claims.entry("iss").or_insert(json!(ISS));
        claims.entry("sub").or_insert(json!("alice-id"));
        Identity {
            issuer: claims.get("iss").and_then(Value::as_str).unwrap_or_default().to_string(),
            subject: claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_string(),
            claims,
        }
    }

    fn alice() -> Identity {
        identity(json!({
            "realm_access": {"roles": ["user", "admin"]},
            "resource_access": {"shop-backend": {"roles": ["reader"]}},
            "scope": "openid profile email",
            "permission": "orders:read orders:write",
            "entitlements": "gold silver",
            "preferred_username": "alice",
            "email_verified": true,
            "level": 3,
            "azp": "shop-web",
            "aud": ["shop", "account"],
            "https://example.com/group": "staff"
        }))
    }

    /// A request with every attribute set; each test changes what it is about.
    #[derive(Clone)]
    struct Req {
        method: &'static str,
        path: &'static str,
        host: &'static str,
        port: Option<u16>,
        source_ip: Option<IpAddr>,
        remote_ip: Option<IpAddr>,
        headers: Vec<(String, String)>,
        who: Option<Identity>,
    }

    fn req() -> Req {
        Req {
            method: "GET",
            path: "/",
            host: "shop.example",
            port: Some(8080),
            source_ip: Some("10.0.0.5".parse().expect("ip")),
            remote_ip: Some("203.0.113.7".parse().expect("ip")),
            headers: vec![("x-env".into(), "prod".into())],
            who: Some(alice()),
        }
    }

    impl Req {
        fn path(mut self, path: &'static str) -> Req {
            self.path = path;
            self
        }
        fn method(mut self, method: &'static str) -> Req {
            self.method = method;
            self
        }
        fn host(mut self, host: &'static str) -> Req {
            self.host = host;
            self
        }
        fn port(mut self, port: Option<u16>) -> Req {
            self.port = port;
            self
        }
        fn source(mut self, ip: Option<&str>) -> Req {
            self.source_ip = ip.map(|ip| ip.parse().expect("ip"));
            self
        }
        fn remote(mut self, ip: Option<&str>) -> Req {
            self.remote_ip = ip.map(|ip| ip.parse().expect("ip"));
            self
        }
        fn header(mut self, name: &str, value: &str) -> Req {
            self.headers.push((name.into(), value.into()));
            self
        }
        fn who(mut self, who: Option<Identity>) -> Req {
            self.who = who;
            self
        }
        fn anonymous(self) -> Req {
            self.who(None)
        }
    }

    fn policies(json: Value) -> Policies {
        crate::config::Config::parse(json.to_string().as_bytes()).expect("valid config").policies
    }

    fn evaluate(p: &Policies, r: &Req) -> Evaluation {
        p.evaluate(&MatchInput {
            path: r.path,
            method: r.method,
            host: r.host,
            port: r.port,
            source_ip: r.source_ip,
            remote_ip: r.remote_ip,
            headers: &r.headers,
            identity: r.who.as_ref(),
        })
    }

    fn decide(p: &Policies, r: &Req) -> PolicyDecision {
        evaluate(p, r).decision
    }

    fn allowed(p: &Policies, r: &Req) -> bool {
        decide(p, r) == PolicyDecision::Allow
    }

    /// Whether `rule` (as JSON) matches `r`: the only rule of the only ALLOW policy.
    fn rule_matches(rule: &Value, r: &Req) -> bool {
        allowed(&policies(json!({"policies": [{"name": "p", "rules": [rule]}]})), r)
    }

    fn check(table: &[(Value, Req, bool)]) {
        for (rule, r, want) in table {
            assert_eq!(
                rule_matches(rule, r),
                *want,
                "rule {rule} on {} {} host={} port={:?} source={:?} remote={:?} headers={:?} who={:?}",
                r.method,
                r.path,
                r.host,
                r.port,
                r.source_ip,
                r.remote_ip,
                r.headers,
                r.who.as_ref().map(Identity::principal)
            );
        }
    }

    fn op(operation: Value) -> Value {
        json!({"to": [{"operation": operation}]})
    }

    fn src(source: Value) -> Value {
        json!({"from": [{"source": source}]})
    }

    fn when(key: &str, values: Value) -> Value {
        json!({"when": [{"key": key, "values": values}]})
    }

    fn when_not(key: &str, not_values: Value) -> Value {
        json!({"when": [{"key": key, "notValues": not_values}]})
    }

    #[test]
    fn string_match_forms() {
        assert!(StringMatch::parse("/a").matches("/a"));
        assert!(!StringMatch::parse("/a").matches("/a/"));
        assert!(StringMatch::parse("/api/*").matches("/api/x/y"));
        assert!(!StringMatch::parse("/api/*").matches("/apix"));
        assert!(StringMatch::parse("*.html").matches("/x/index.html"));
        assert!(StringMatch::parse("*").matches("/"));
        assert!(!StringMatch::parse("*").matches(""));
    }

    #[test]
    fn paths_and_not_paths() {
        check(&[
            (op(json!({"paths": ["/a"]})), req().path("/a"), true),
            (op(json!({"paths": ["/a"]})), req().path("/a/"), false),
            (op(json!({"paths": ["/a"]})), req().path("/A"), false),
            (op(json!({"paths": ["/api/*"]})), req().path("/api/x/y"), true),
            (op(json!({"paths": ["/api/*"]})), req().path("/api"), false),
            (op(json!({"paths": ["/api*"]})), req().path("/apix"), true),
            (op(json!({"paths": ["*.css"]})), req().path("/s/site.css"), true),
            (op(json!({"paths": ["*.css"]})), req().path("/s/site.css.map"), false),
            (op(json!({"paths": ["*"]})), req().path("/"), true),
            (op(json!({"paths": ["/x", "/y"]})), req().path("/y"), true),
            (op(json!({"paths": ["/orders/{*}/items"]})), req().path("/orders/7/items"), true),
            (op(json!({"paths": ["/orders/{*}/items"]})), req().path("/orders/7/8/items"), false),
            (op(json!({"paths": ["/files/{**}"]})), req().path("/files/a/b"), true),
            (op(json!({"paths": ["/files/{**}"]})), req().path("/files"), false),
            (op(json!({"paths": ["/{**}/edit"]})), req().path("/a/b/edit"), true),
            (op(json!({"notPaths": ["/admin*"]})), req().path("/admin/x"), false),
            (op(json!({"notPaths": ["/admin*"]})), req().path("/shop"), true),
            (op(json!({"paths": ["/api/*"], "notPaths": ["/api/internal/*"]})), req().path("/api/internal/x"), false),
            (op(json!({"paths": ["/api/*"], "notPaths": ["/api/{*}/secret"]})), req().path("/api/x/secret"), false),
            (op(json!({"paths": ["/api/*"], "notPaths": ["/api/{*}/secret"]})), req().path("/api/x/y/secret"), true),
        ]);
    }

    #[test]
    fn methods_and_not_methods() {
        check(&[
            (op(json!({"methods": ["GET", "HEAD"]})), req().method("HEAD"), true),
            (op(json!({"methods": ["GET"]})), req().method("POST"), false),
            (op(json!({"methods": ["GET"]})), req().method("get"), false),
            (op(json!({"methods": ["P*"]})), req().method("PATCH"), true),
            (op(json!({"methods": ["*"]})), req().method("OPTIONS"), true),
            (op(json!({"notMethods": ["DELETE"]})), req().method("DELETE"), false),
            (op(json!({"notMethods": ["DELETE"]})), req().method("GET"), true),
            (op(json!({"methods": ["*"], "notMethods": ["P*"]})), req().method("PUT"), false),
        ]);
    }

    #[test]
    fn hosts_are_case_insensitive_with_and_without_port() {
        check(&[
            (op(json!({"hosts": ["shop.example"]})), req().host("shop.example"), true),
            (op(json!({"hosts": ["shop.example"]})), req().host("Shop.EXAMPLE"), true),
            (op(json!({"hosts": ["SHOP.example"]})), req().host("shop.example"), true),
            (op(json!({"hosts": ["shop.example"]})), req().host("shop.example:8443"), true),
            (op(json!({"hosts": ["shop.example"]})), req().host("shop.example.evil"), false),
            (op(json!({"hosts": ["shop.example"]})), req().host("evil.shop.example"), false),
            (op(json!({"hosts": ["shop.example:8443"]})), req().host("shop.example:8443"), true),
            (op(json!({"hosts": ["shop.example:8443"]})), req().host("shop.example"), false),
            (op(json!({"hosts": ["shop.example:8443"]})), req().host("shop.example:9443"), false),
            (op(json!({"hosts": ["*.example"]})), req().host("api.Example:80"), true),
            (op(json!({"hosts": ["*.example"]})), req().host("example"), false),
            (op(json!({"hosts": ["shop.*"]})), req().host("shop.test"), true),
            (op(json!({"hosts": ["*"]})), req().host("anything"), true),
            (op(json!({"hosts": ["[::1]"]})), req().host("[::1]:8080"), true),
            (op(json!({"hosts": ["[::1]:8080"]})), req().host("[::1]:8080"), true),
            (op(json!({"notHosts": ["admin.example"]})), req().host("ADMIN.example:443"), false),
            (op(json!({"notHosts": ["admin.example"]})), req().host("shop.example"), true),
        ]);
    }

    #[test]
    fn ports_and_not_ports() {
        check(&[
            (op(json!({"ports": ["8080"]})), req().port(Some(8080)), true),
            (op(json!({"ports": [8080]})), req().port(Some(8080)), true),
            (op(json!({"ports": ["8080", "9090"]})), req().port(Some(9090)), true),
            (op(json!({"ports": ["8080"]})), req().port(Some(8081)), false),
            (op(json!({"ports": ["8080"]})), req().port(None), false),
            (op(json!({"notPorts": ["15000"]})), req().port(Some(15000)), false),
            (op(json!({"notPorts": ["15000"]})), req().port(Some(8080)), true),
            (op(json!({"notPorts": ["15000"]})), req().port(None), true),
            // The port is the connection's, not the one written in the Host header.
            (op(json!({"ports": ["9999"]})), req().host("shop.example:9999").port(Some(8080)), false),
        ]);
    }

    #[test]
    fn operation_fields_are_anded_and_operations_ored() {
        let both = op(json!({"methods": ["GET"], "paths": ["/a"], "hosts": ["shop.example"], "ports": ["8080"]}));
        check(&[
            (both.clone(), req().path("/a"), true),
            (both.clone(), req().path("/a").method("POST"), false),
            (both.clone(), req().path("/a").host("other"), false),
            (both.clone(), req().path("/a").port(Some(1)), false),
            (
                json!({"to": [{"operation": {"paths": ["/a"]}}, {"operation": {"paths": ["/b"]}}]}),
                req().path("/b"),
                true,
            ),
            (json!({"to": [{"operation": {}}]}), req().path("/anything"), true),
        ]);
    }

    #[test]
    fn request_principals_split_at_the_last_slash() {
        let other_iss = identity(json!({"iss": "https://evil", "sub": "alice-id"}));
        let longer_iss = identity(json!({"iss": format!("{ISS}/extra"), "sub": "x"}));
        let no_sub = identity(json!({"sub": null}));
        let slashed_sub = identity(json!({"sub": "team/alice"}));
        let bare = identity(json!({"iss": "issuer-without-slash", "sub": ""}));
        check(&[
            (src(json!({"requestPrincipals": [format!("{ISS}/alice-id")]})), req(), true),
            (src(json!({"requestPrincipals": [format!("{ISS}/alice-id")]})), req().who(Some(other_iss.clone())), false),
            (src(json!({"requestPrincipals": [format!("{ISS}/*")]})), req(), true),
            (src(json!({"requestPrincipals": [format!("{ISS}/*")]})), req().who(Some(other_iss.clone())), false),
            // Split, not a string prefix: iss ".../shop/extra" with sub "x" is not ".../shop/*".
            (src(json!({"requestPrincipals": [format!("{ISS}/*")]})), req().who(Some(longer_iss.clone())), false),
            (src(json!({"requestPrincipals": [format!("{ISS}/ali*")]})), req(), true),
            (src(json!({"requestPrincipals": [format!("{ISS}/bob*")]})), req(), false),
            (src(json!({"requestPrincipals": ["*/alice-id"]})), req().who(Some(other_iss.clone())), true),
            (src(json!({"requestPrincipals": ["*/realms/shop/alice-id"]})), req(), true),
            (src(json!({"requestPrincipals": ["*/realms/shop/alice-id"]})), req().who(Some(other_iss)), false),
            (src(json!({"requestPrincipals": ["*-id"]})), req(), true),
            (src(json!({"requestPrincipals": ["https://idp/*"]})), req(), false),
            // Without a `/`, a trailing `*` is on the issuer (and any subject).
            (src(json!({"requestPrincipals": ["https:*"]})), req(), true),
            (src(json!({"requestPrincipals": ["https://idp/realms/shop*"]})), req(), false),
            (src(json!({"requestPrincipals": ["issuer-without*"]})), req().who(Some(bare.clone())), false),
            (src(json!({"requestPrincipals": ["issuer-without-slash"]})), req().who(Some(bare)), true),
            (src(json!({"requestPrincipals": ["*"]})), req(), true),
            (src(json!({"requestPrincipals": ["*"]})), req().anonymous(), false),
            (src(json!({"requestPrincipals": ["*"]})), req().who(Some(no_sub.clone())), false),
            (src(json!({"requestPrincipals": [format!("{ISS}/")]})), req().who(Some(no_sub)), false),
            (src(json!({"requestPrincipals": [format!("{ISS}/team/alice")]})), req().who(Some(slashed_sub)), false),
            (src(json!({"notRequestPrincipals": ["*"]})), req().anonymous(), true),
            (src(json!({"notRequestPrincipals": ["*"]})), req(), false),
            (src(json!({"notRequestPrincipals": [format!("{ISS}/bob-id")]})), req(), true),
            (
                src(json!({"requestPrincipals": ["*"], "notRequestPrincipals": [format!("{ISS}/alice-id")]})),
                req(),
                false,
            ),
            (
                json!({"from": [{"source": {"requestPrincipals": ["a/b"]}}, {"source": {"requestPrincipals": ["*"]}}]}),
                req(),
                true,
            ),
        ]);
    }

    #[test]
    fn ip_blocks_and_remote_ip_blocks() {
        check(&[
            (src(json!({"ipBlocks": ["10.0.0.0/8"]})), req(), true),
            (src(json!({"ipBlocks": ["10.0.0.5"]})), req(), true),
            (src(json!({"ipBlocks": ["192.168.0.0/16"]})), req(), false),
            (src(json!({"ipBlocks": ["10.0.0.0/8"]})), req().source(None), false),
            (src(json!({"notIpBlocks": ["10.0.0.0/8"]})), req(), false),
            (src(json!({"notIpBlocks": ["10.0.0.0/8"]})), req().source(None), true),
            (src(json!({"ipBlocks": ["2001:db8::/32"]})), req().source(Some("2001:db8::9")), true),
            (src(json!({"remoteIpBlocks": ["203.0.113.0/24"]})), req(), true),
            (src(json!({"remoteIpBlocks": ["10.0.0.0/8"]})), req(), false),
            (src(json!({"notRemoteIpBlocks": ["203.0.113.7"]})), req(), false),
            (src(json!({"notRemoteIpBlocks": ["203.0.113.7"]})), req().remote(Some("198.51.100.1")), true),
            (src(json!({"remoteIpBlocks": ["0.0.0.0/0"]})), req().remote(None), false),
            (src(json!({"ipBlocks": ["10.0.0.0/8"], "remoteIpBlocks": ["203.0.113.0/24"]})), req(), true),
            (
                src(json!({"ipBlocks": ["10.0.0.0/8"], "remoteIpBlocks": ["203.0.113.0/24"]})),
                req().remote(Some("1.1.1.1")),
                false,
            ),
        ]);
    }

    #[test]
    fn when_keys() {
        let multi_aud = identity(json!({"aud": "shop", "azp": ["shop-web", "cli"]}));
        check(&[
            (when("request.auth.claims[realm_access][roles]", json!(["admin"])), req(), true),
            (when("request.auth.claims[realm_access][roles]", json!(["root"])), req(), false),
            (when("request.auth.claims[realm_access.roles]", json!(["admin"])), req(), true),
            (when("request.auth.claims[resource_access][shop-backend][roles]", json!(["reader"])), req(), true),
            (when("request.auth.claims[scope]", json!(["email"])), req(), true),
            (when("request.auth.claims[scope]", json!(["openid profile email"])), req(), false),
            (when("request.auth.claims[permission]", json!(["orders:write"])), req(), true),
            (when("request.auth.claims[entitlements]", json!(["gold"])), req(), false),
            (when("request.auth.claims[preferred_username]", json!(["alice"])), req(), true),
            (when("request.auth.claims[preferred_username]", json!(["ali*"])), req(), true),
            (when("request.auth.claims[preferred_username]", json!(["*ice"])), req(), true),
            (when("request.auth.claims[preferred_username]", json!(["*"])), req(), true),
            (when("request.auth.claims[preferred_username]", json!(["bob"])), req(), false),
            (when("request.auth.claims[email_verified]", json!(["true"])), req(), true),
            (when("request.auth.claims[email_verified]", json!(["false"])), req(), false),
            (when("request.auth.claims[level]", json!(["3"])), req(), true),
            (when("request.auth.claims[level]", json!(["3.0"])), req(), false),
            (when("request.auth.claims[missing]", json!(["*"])), req(), false),
            (when("request.auth.claims[realm_access]", json!(["*"])), req(), false),
            (when("request.auth.claims[https://example.com/group]", json!(["staff"])), req(), true),
            (when("request.auth.claims[iss]", json!([ISS])), req(), true),
            (when("request.auth.claims[realm_access][roles]", json!(["*"])), req().anonymous(), false),
            (when_not("request.auth.claims[realm_access][roles]", json!(["admin"])), req(), false),
            (when_not("request.auth.claims[realm_access][roles]", json!(["admin"])), req().anonymous(), true),
            (when("request.auth.presenter", json!(["shop-web"])), req(), true),
            (when("request.auth.presenter", json!(["cli"])), req().who(Some(multi_aud.clone())), true),
            (when("request.auth.presenter", json!(["*"])), req().anonymous(), false),
            (when("request.auth.audiences", json!(["shop"])), req(), true),
            (when("request.auth.audiences", json!(["acc*"])), req(), true),
            (when("request.auth.audiences", json!(["shop"])), req().who(Some(multi_aud)), true),
            (when("request.auth.audiences", json!(["other"])), req(), false),
            (when("request.auth.principal", json!([format!("{ISS}/alice-id")])), req(), true),
            (when("request.auth.principal", json!([format!("{ISS}/*")])), req(), true),
            (when_not("request.auth.principal", json!([format!("{ISS}/alice-id")])), req(), false),
            (when("request.headers[X-Env]", json!(["prod"])), req(), true),
            (when("request.headers[x-env]", json!(["dev"])), req(), false),
            (when("request.headers[x-env]", json!(["pr*"])), req(), true),
            (when("request.headers[x-missing]", json!(["*"])), req(), false),
            (when_not("request.headers[x-missing]", json!(["*"])), req(), true),
            // Every occurrence and every comma-separated element counts (no DENY sidestep).
            (
                when("request.headers[x-role]", json!(["admin"])),
                req().header("x-role", "user").header("x-role", "admin"),
                true,
            ),
            (when("request.headers[x-role]", json!(["admin"])), req().header("x-role", "user, admin"), true),
            (when("request.headers[x-role]", json!(["user, admin"])), req().header("x-role", "user, admin"), true),
            (when_not("request.headers[x-role]", json!(["admin"])), req().header("x-role", "user,admin"), false),
            (when("source.ip", json!(["10.0.0.0/8"])), req(), true),
            (when("source.ip", json!(["10.0.0.6"])), req(), false),
            (when_not("source.ip", json!(["10.0.0.5"])), req(), false),
            (when("source.ip", json!(["10.0.0.0/8"])), req().source(None), false),
            (when("remote.ip", json!(["203.0.113.0/24", "198.51.100.0/24"])), req(), true),
            (when("remote.ip", json!(["10.0.0.0/8"])), req(), false),
            (when_not("remote.ip", json!(["203.0.113.7"])), req(), false),
            (when("destination.port", json!(["8080"])), req(), true),
            (when("destination.port", json!(["80"])), req(), false),
            (when_not("destination.port", json!(["8080"])), req(), false),
            (when("destination.port", json!(["8080"])), req().port(None), false),
            (
                json!({"when": [{"key": "request.headers[x-env]", "values": ["prod", "dev"], "notValues": ["dev"]}]}),
                req(),
                true,
            ),
            (
                json!({"when": [{"key": "request.headers[x-env]", "values": ["prod"], "notValues": ["pr*"]}]}),
                req(),
                false,
            ),
        ]);
    }

    #[test]
    fn every_when_must_match_and_one_from_and_one_to() {
        let rule = json!({
            "from": [{"source": {"requestPrincipals": ["*"]}}],
            "to": [{"operation": {"paths": ["/admin/*"]}}],
            "when": [
                {"key": "request.auth.claims[realm_access][roles]", "values": ["admin"]},
                {"key": "request.headers[x-env]", "values": ["prod"]}
            ]
        });
        check(&[
            (rule.clone(), req().path("/admin/x"), true),
            (rule.clone(), req().path("/admin/x").anonymous(), false),
            (rule.clone(), req().path("/shop"), false),
            (rule.clone(), Req { headers: vec![], ..req().path("/admin/x") }, false),
            (rule, req().path("/admin/x").who(Some(identity(json!({"realm_access": {"roles": ["user"]}})))), false),
        ]);
    }

    #[test]
    fn configured_space_delimited_claims_add_to_the_defaults() {
        let p = policies(json!({"spaceDelimitedClaims": ["entitlements"], "policies": [{"rules": [
            {"when": [{"key": "request.auth.claims[entitlements]", "values": ["gold"]},
                      {"key": "request.auth.claims[scope]", "values": ["email"]}]}
        ]}]}));
        assert!(allowed(&p, &req()));
        assert_eq!(p.space_delimited_claims, vec!["scope", "permission", "entitlements"]);
        // Nested: the innermost name decides.
        let nested = policies(json!({"spaceDelimitedClaims": ["grants"], "policies": [{"rules": [
            {"when": [{"key": "request.auth.claims[ext][grants]", "values": ["b"]}]}
        ]}]}));
        assert!(allowed(&nested, &req().who(Some(identity(json!({"ext": {"grants": "a b c"}}))))));
    }

    #[test]
    fn deny_first_then_allow_semantics() {
        let p = policies(json!({"policies": [
            {"name": "deny-debug", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/debug*"]}}]}]},
            {"name": "shop", "action": "ALLOW", "rules": [
                {"to": [{"operation": {"paths": ["/healthz"], "methods": ["GET"]}}]},
                {"from": [{"source": {"requestPrincipals": ["*"]}}], "to": [{"operation": {"paths": ["/debug/*", "/api/*"]}}]}
            ]}
        ]}));
        assert!(allowed(&p, &req().path("/healthz").anonymous()));
        assert!(!allowed(&p, &req().path("/healthz").method("POST").anonymous()));
        assert!(!allowed(&p, &req().path("/api/x").anonymous()));
        assert!(allowed(&p, &req().path("/api/x")));
        assert_eq!(decide(&p, &req().path("/debug/x")), PolicyDecision::Deny { policy: Some("deny-debug".into()) });
        assert_eq!(decide(&p, &req().path("/other")), PolicyDecision::Deny { policy: None });
    }

    #[test]
    fn empty_rules_unset_rules_and_missing_policies() {
        let r = req().path("/x").anonymous();
        let only_deny = policies(
            json!({"policies": [{"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}]}),
        );
        assert!(allowed(&only_deny, &r));
        assert!(!allowed(&only_deny, &r.clone().method("DELETE")));
        // ALLOW without rules: allow-nothing.
        assert!(!allowed(&policies(json!({"policies": [{"name": "none", "action": "ALLOW"}]})), &r));
        assert!(!allowed(&policies(json!({"policies": [{"name": "none", "rules": []}]})), &r));
        // A rule {} matches everything: allow-all, or with DENY deny-all.
        assert!(allowed(&policies(json!({"policies": [{"name": "all", "action": "ALLOW", "rules": [{}]}]})), &r));
        assert!(!allowed(&policies(json!({"policies": [{"action": "DENY", "rules": [{}]}]})), &r));
        // DENY without rules denies nothing.
        assert!(allowed(&policies(json!({"policies": [{"action": "DENY"}]})), &r));
        // AUDIT policies alone decide nothing: everything is allowed.
        assert!(allowed(&policies(json!({"policies": [{"action": "AUDIT", "rules": [{}]}]})), &r));
        // An ALLOW matching anywhere among several ALLOW policies is enough.
        let two = policies(json!({"policies": [
            {"name": "a", "rules": [{"to": [{"operation": {"paths": ["/a"]}}]}]},
            {"name": "b", "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]}
        ]}));
        assert!(allowed(&two, &r));
    }

    #[test]
    fn audit_policies_are_reported_and_change_nothing() {
        let p = policies(json!({"policies": [
            {"name": "audit-admin", "action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}]},
            {"name": "audit-all-deletes", "action": "AUDIT", "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]},
            {"name": "deny-delete", "action": "DENY", "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}
        ]}));
        let audited = |policy: &str| PolicyNote::Audited { policy: policy.into() };
        let e = evaluate(&p, &req().path("/admin/x"));
        assert_eq!((e.decision, e.notes), (PolicyDecision::Allow, vec![audited("audit-admin")]));
        let e = evaluate(&p, &req().path("/admin/x").method("DELETE"));
        assert_eq!(e.decision, PolicyDecision::Deny { policy: Some("deny-delete".into()) });
        assert_eq!(e.notes, vec![audited("audit-admin"), audited("audit-all-deletes")]);
        assert_eq!(evaluate(&p, &req().path("/shop")).notes, vec![]);
    }

    #[test]
    fn dry_run_policies_are_reported_not_enforced() {
        let p = policies(json!({"policies": [
            {"name": "try-deny-debug", "action": "DENY", "dryRun": true, "rules": [{"to": [{"operation": {"paths": ["/debug/*"]}}]}]},
            {"name": "deny-secret", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/secret"]}}]}]},
            {"name": "try-only-api", "action": "ALLOW", "dryRun": true, "rules": [{"to": [{"operation": {"paths": ["/api/*"]}}]}]}
        ]}));
        // No enforced ALLOW policy: everything not denied is allowed; the dry-run ones would change that.
        let e = evaluate(&p, &req().path("/debug/x"));
        assert_eq!(e.decision, PolicyDecision::Allow);
        assert_eq!(e.notes, vec![PolicyNote::DryRunWouldDeny { policy: Some("try-deny-debug".into()) }]);
        let e = evaluate(&p, &req().path("/shop"));
        assert_eq!(e.decision, PolicyDecision::Allow);
        assert_eq!(e.notes, vec![PolicyNote::DryRunWouldDeny { policy: None }]);
        let e = evaluate(&p, &req().path("/api/x"));
        assert_eq!((e.decision, e.notes), (PolicyDecision::Allow, vec![]));
        // Enforced denials stay denials; a dry-run policy cannot lift them, so nothing to report.
        let e = evaluate(&p, &req().path("/secret"));
        assert_eq!((e.decision, e.notes), (PolicyDecision::Deny { policy: Some("deny-secret".into()) }, vec![]));

        let allow = policies(json!({"policies": [
            {"name": "only-shop", "rules": [{"to": [{"operation": {"paths": ["/shop"]}}]}]},
            {"name": "try-also-api", "dryRun": true, "rules": [{"to": [{"operation": {"paths": ["/api/*"]}}]}]}
        ]}));
        let e = evaluate(&allow, &req().path("/api/x"));
        assert_eq!(e.decision, PolicyDecision::Deny { policy: None });
        assert_eq!(e.notes, vec![PolicyNote::DryRunWouldAllow { policy: "try-also-api".into() }]);
        assert_eq!(evaluate(&allow, &req().path("/shop")).notes, vec![]);
    }

    #[test]
    fn token_requirement_matchers_are_operations() {
        let config = crate::config::Config::parse(
            json!({"jwtRules": [{"issuer": ISS, "jwksUri": "https://idp/certs"}],
                   "tokenRequirements": [{"match": {"paths": ["/healthz"], "methods": ["GET"]}, "skipValidation": true}]})
            .to_string()
            .as_bytes(),
        )
        .expect("valid");
        let matcher = &config.token_requirements[0].matcher;
        let input = |r: &Req| MatchInput {
            path: r.path,
            method: r.method,
            host: r.host,
            port: r.port,
            source_ip: None,
            remote_ip: None,
            headers: &[],
            identity: None,
        };
        assert!(matcher.matches_request(&input(&req().path("/healthz"))));
        assert!(!matcher.matches_request(&input(&req().path("/healthz").method("POST"))));
        assert!(!matcher.matches_request(&input(&req().path("/healthz/x"))));
    }
}
