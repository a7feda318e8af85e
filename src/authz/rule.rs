//! Istio's `Rule`: its `from` sources, `to` operations and `when` conditions, and how each matches.

use super::{included_and_not_excluded, Context, MatchInput};
use super::{Cidr, HostMatch, PathMatch, Peer, PeerMatch, PrincipalMatch, StringMatch};
use crate::identity::{claim_values, token_audiences, ClaimPath, Identity};
use std::net::IpAddr;

#[derive(Debug, Default)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

/// Istio's `Source`: the JWT identity, the mTLS peer's identity and the addresses. Each field is
/// its own condition, and all must hold.
#[derive(Debug, Default)]
pub struct Source {
    pub request_principals: Vec<PrincipalMatch>,
    pub not_request_principals: Vec<PrincipalMatch>,
    pub principals: Vec<PeerMatch>,
    pub not_principals: Vec<PeerMatch>,
    pub namespaces: Vec<PeerMatch>,
    pub not_namespaces: Vec<PeerMatch>,
    pub service_accounts: Vec<PeerMatch>,
    pub not_service_accounts: Vec<PeerMatch>,
    pub trust_domains: Vec<PeerMatch>,
    pub not_trust_domains: Vec<PeerMatch>,
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
    /// `source.principal`: the mTLS peer, matched as `principals` are.
    SourcePrincipal,
    /// `source.namespace`: the mTLS peer's namespace, matched as `namespaces` are.
    SourceNamespace,
    /// `connection.sni`: the TLS server name the client asked for.
    ConnectionSni,
    /// `destination.ip`: the address the connection came in on.
    DestinationIp,
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
    /// `source.principal`: written as `principals` are.
    PeerPrincipal,
    /// `source.namespace`: written as `namespaces` are.
    PeerNamespace,
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
            "source.principal" => return Ok(ConditionKey::SourcePrincipal),
            "source.namespace" => return Ok(ConditionKey::SourceNamespace),
            "connection.sni" => return Ok(ConditionKey::ConnectionSni),
            "destination.ip" => return Ok(ConditionKey::DestinationIp),
            _ => {}
        }
        if let Some(rest) = key.strip_prefix("request.auth.claims") {
            return ClaimPath::bracketed(rest).map(ConditionKey::Claim).ok_or_else(|| {
                format!(
                    "{key_q}: expected request.auth.claims[name] or request.auth.claims[a][b]",
                    key_q = crate::json::Quoted(key)
                )
            });
        }
        if let Some(rest) = key.strip_prefix("request.headers[") {
            return match rest.strip_suffix(']') {
                Some(name) if !name.is_empty() && !name.contains(['[', ']']) => {
                    Ok(ConditionKey::Header(name.to_ascii_lowercase()))
                }
                _ => Err(format!("{key_q}: expected request.headers[name]", key_q = crate::json::Quoted(key))),
            };
        }
        Err(format!(
            "unsupported key {key_q}: supported are request.auth.claims[...], request.auth.principal, \
             request.auth.audiences, request.auth.presenter, request.headers[...], source.ip, remote.ip, \
             source.principal, source.namespace, connection.sni, destination.ip and destination.port",
            key_q = crate::json::Quoted(key)
        ))
    }

    pub fn value_kind(&self) -> ValueKind {
        match self {
            ConditionKey::Principal => ValueKind::Principal,
            ConditionKey::SourcePrincipal => ValueKind::PeerPrincipal,
            ConditionKey::SourceNamespace => ValueKind::PeerNamespace,
            ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp => ValueKind::Address,
            ConditionKey::DestinationPort => ValueKind::Port,
            ConditionKey::Claim(_)
            | ConditionKey::Audiences
            | ConditionKey::Presenter
            | ConditionKey::Header(_)
            | ConditionKey::ConnectionSni => ValueKind::String,
        }
    }
}

/// One value of a condition, compiled for its key's kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    String(StringMatch),
    Principal(PrincipalMatch),
    Peer(PeerMatch),
    Address(Cidr),
    Port(u16),
}

impl Rule {
    pub(super) fn matches(&self, context: &Context<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(context)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(context)))
            && self.when.iter().all(|c| c.matches(context))
    }
}

impl Source {
    pub(super) fn matches(&self, context: &Context<'_>) -> bool {
        let input = context.input;
        let identity = input.identity.as_slice();
        let source_ip = input.source_ip.as_slice();
        let remote_ip = input.remote_ip.as_slice();
        let peer = input.peer.as_slice();
        let peer_matches = |m: &PeerMatch, p: &&Peer| m.matches(p);
        included_and_not_excluded(&self.request_principals, &self.not_request_principals, identity, |m, id| {
            m.matches(id)
        }) && included_and_not_excluded(&self.principals, &self.not_principals, peer, peer_matches)
            && included_and_not_excluded(&self.namespaces, &self.not_namespaces, peer, peer_matches)
            && included_and_not_excluded(&self.service_accounts, &self.not_service_accounts, peer, peer_matches)
            && included_and_not_excluded(&self.trust_domains, &self.not_trust_domains, peer, peer_matches)
            && included_and_not_excluded(&self.ip_blocks, &self.not_ip_blocks, source_ip, |block, ip| {
                block.contains(*ip)
            })
            && included_and_not_excluded(&self.remote_ip_blocks, &self.not_remote_ip_blocks, remote_ip, |block, ip| {
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

    pub(super) fn matches(&self, context: &Context<'_>) -> bool {
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

/// One value of an attribute, as conditions compare it.
enum Attribute<'a> {
    Text(String),
    /// A request header's value, whole or one comma-separated element.
    Header(String),
    Identity(&'a Identity),
    Peer(&'a Peer),
    Address(IpAddr),
    Port(u16),
}

impl ValueMatch {
    fn matches(&self, attribute: &Attribute<'_>) -> bool {
        match (self, attribute) {
            (ValueMatch::String(m), Attribute::Text(text)) => m.matches(text),
            // Istio translates `*` for a header into Envoy's `present_match`: a header sent with an
            // empty value is present. Elsewhere `*` is `.+` (non-empty), as in Istio.
            (ValueMatch::String(m), Attribute::Header(text)) => m.is_presence() || m.matches(text),
            (ValueMatch::Principal(m), Attribute::Identity(identity)) => m.matches(identity),
            (ValueMatch::Peer(m), Attribute::Peer(peer)) => m.matches(peer),
            (ValueMatch::Address(block), Attribute::Address(address)) => block.contains(*address),
            (ValueMatch::Port(want), Attribute::Port(got)) => want == got,
            _ => false,
        }
    }
}

impl Condition {
    pub(super) fn matches(&self, context: &Context<'_>) -> bool {
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
            ConditionKey::Audiences => {
                texts(identity.map(|id| token_audiences(&id.claims).map(str::to_string).collect()).unwrap_or_default())
            }
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
            ConditionKey::Header(name) => {
                header_values(input.headers, name).into_iter().map(Attribute::Header).collect()
            }
            ConditionKey::SourceIp => input.source_ip.map(Attribute::Address).into_iter().collect(),
            ConditionKey::RemoteIp => input.remote_ip.map(Attribute::Address).into_iter().collect(),
            ConditionKey::DestinationPort => input.port.map(Attribute::Port).into_iter().collect(),
            ConditionKey::SourcePrincipal | ConditionKey::SourceNamespace => {
                input.peer.map(Attribute::Peer).into_iter().collect()
            }
            ConditionKey::ConnectionSni => input.sni.map(|sni| Attribute::Text(sni.to_string())).into_iter().collect(),
            ConditionKey::DestinationIp => input.destination_ip.map(Attribute::Address).into_iter().collect(),
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
