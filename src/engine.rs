//! The decision for one request: normalize, authenticate, authorize, and say what to do.
//!
//! This is the pure core's entry point: it reads a `Request` snapshot, the key cache and `now`,
//! and returns a `Decision` (or asks to wait for keys). The host layer performs what it says.

use crate::authn::dpop::{DpopError, ProofRequest, ProofUse};
use crate::authn::extract::{self, HeaderSource, LocationId, TokenLocation};
use crate::authn::introspection::{Answers, NoAnswers};
use crate::authn::token_cache::TokenCache;
use crate::authn::verify::Verifier;
use crate::authn::{self, Authenticated, AuthnError, AuthnOutcome};
use crate::authz::path::{self, UnsafePathAction};
use crate::authz::{cidr, ConnectionReads, MatchInput, Peer, PolicyDecision, PolicyNote, RequirementAction};
use crate::config::Config;
use crate::deny::{Denial, DenyContext};
use crate::identity::claim_values;
use crate::ids::ProviderId;
use crate::keys::KeyStore;

/// The request attributes the filter reads, captured once from the host.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// The raw `:path`, query included.
    pub path: String,
    pub authority: String,
    pub scheme: String,
    /// Regular headers (no pseudo-headers), names lower-case.
    pub headers: Vec<(String, String)>,
    /// The port the connection came in on (Envoy's `destination.port`), when known.
    pub destination_port: Option<u16>,
    /// The connection's peer as Envoy reports it (`source.address`, `ip:port`), when known.
    pub source_address: Option<String>,
    /// The mTLS peer certificate's names, when the connection has one (`connection.mtls`).
    pub peer: Option<Peer>,
    /// The TLS server name the client asked for (`connection.requested_server_name`).
    pub requested_server_name: Option<String>,
    /// The address the connection came in on (`destination.address`, `ip:port`).
    pub destination_address: Option<String>,
}

impl Request {
    /// Builds a request from the host's header list, pseudo-headers included.
    pub fn from_header_pairs(pairs: Vec<(String, String)>) -> Request {
        let mut request = Request::default();
        for (name, value) in pairs {
            match name.as_str() {
                ":method" => request.method = value,
                ":path" => request.path = value,
                ":authority" => request.authority = value,
                ":scheme" => request.scheme = value,
                _ if name.starts_with(':') => {}
                // Envoy hands over lower-case names already; only copy a name that is not.
                _ if name.bytes().any(|b| b.is_ascii_uppercase()) => {
                    request.headers.push((name.to_ascii_lowercase(), value))
                }
                _ => request.headers.push((name, value)),
            }
        }
        request
    }
}

/// A connection property a rule may read, and where Envoy keeps it. The host fetches the ones
/// `read_by` names (every read is a call out of the VM and a copy) and hands the raw bytes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Property {
    DestinationPort,
    SourceAddress,
    /// Whether the connection is TLS with a peer certificate; read before the certificate's names.
    Mtls,
    /// Envoy's RBAC compares a principal with the URI SAN, the DNS SAN and the subject; Wasm is
    /// shown the first of each.
    PeerUriSan,
    PeerDnsSan,
    PeerSubject,
    RequestedServerName,
    DestinationAddress,
    /// The client certificate's SHA-256 digest, hex: read only for a `Decision::Bound`, never up
    /// front (`read_by` does not list it).
    PeerCertificateDigest,
}

impl Property {
    /// The properties the configured rules read, in the order they must be set.
    pub fn read_by(reads: ConnectionReads) -> Vec<Property> {
        let mut properties = Vec::new();
        if reads.destination_port {
            properties.push(Property::DestinationPort);
        }
        if reads.source_address {
            properties.push(Property::SourceAddress);
        }
        if reads.peer_certificate {
            properties.extend([Property::Mtls, Property::PeerUriSan, Property::PeerDnsSan, Property::PeerSubject]);
        }
        if reads.requested_server_name {
            properties.push(Property::RequestedServerName);
        }
        if reads.destination_address {
            properties.push(Property::DestinationAddress);
        }
        properties
    }

    pub fn path(self) -> &'static [&'static str] {
        match self {
            Property::DestinationPort => &["destination", "port"],
            Property::SourceAddress => &["source", "address"],
            Property::Mtls => &["connection", "mtls"],
            Property::PeerUriSan => &["connection", "uri_san_peer_certificate"],
            Property::PeerDnsSan => &["connection", "dns_san_peer_certificate"],
            Property::PeerSubject => &["connection", "subject_peer_certificate"],
            Property::RequestedServerName => &["connection", "requested_server_name"],
            Property::DestinationAddress => &["destination", "address"],
            Property::PeerCertificateDigest => &["connection", "sha256_peer_certificate_digest"],
        }
    }
}

impl Request {
    /// Takes in a property's value as Envoy serializes it: integers as 8 little-endian bytes, a
    /// boolean as one byte, strings as their bytes. Anything else leaves the attribute unknown.
    pub fn set_property(&mut self, property: Property, value: &[u8]) {
        let text = || std::str::from_utf8(value).ok().map(str::to_string);
        let non_empty = || text().filter(|text| !text.is_empty());
        match property {
            Property::DestinationPort => {
                let raw: Option<[u8; 8]> = value.try_into().ok();
                self.destination_port = raw.and_then(|raw| u16::try_from(i64::from_le_bytes(raw)).ok());
            }
            Property::SourceAddress => self.source_address = non_empty(),
            // No certificate, no peer: not even an empty one, so `*` cannot match a plaintext caller.
            Property::Mtls if value == [1] => self.peer = Some(Peer::default()),
            Property::Mtls => self.peer = None,
            Property::PeerUriSan | Property::PeerDnsSan | Property::PeerSubject => {
                if let (Some(peer), Some(name)) = (self.peer.as_mut(), non_empty()) {
                    peer.names.push(name);
                }
            }
            Property::RequestedServerName => self.requested_server_name = text(),
            Property::DestinationAddress => self.destination_address = non_empty(),
            // Not a request attribute: the digest is handed to `Scheduler::bind` directly.
            Property::PeerCertificateDigest => {}
        }
    }
}

impl HeaderSource for Request {
    fn header_values<'a>(&'a self, name: &'a str) -> Box<dyn Iterator<Item = &'a str> + 'a> {
        Box::new(self.headers.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str()))
    }

    fn raw_path(&self) -> &str {
        &self.path
    }
}

/// A change to the request before it goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderChange {
    Remove(String),
    Set(String, String),
}

/// `notes` are what to log and count besides the decision (AUDIT matches, dry-run outcomes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        changes: Vec<HeaderChange>,
        principal: Option<String>,
        notes: Vec<PolicyNote>,
    },
    Deny {
        denial: Denial,
        realm: String,
        notes: Vec<PolicyNote>,
        context: DenyContext,
    },
    /// `decision` holds only on a connection whose client certificate has the SHA-256 digest
    /// `thumbprint`, the one the token is bound to (RFC 8705); `mismatch` (401) otherwise. The
    /// host reads `Property::PeerCertificateDigest` for it and hands it to `Scheduler::bind`, which
    /// picks one: only requests with a bound token pay for that read.
    Bound {
        thumbprint: [u8; 32],
        decision: Box<Decision>,
        mismatch: Box<Decision>,
    },
    /// `decision` holds only if the request's DPoP proof (RFC 9449) is new: the scheduler records
    /// its `jti` in the replay store shared by every worker (`Scheduler::prove`), and answers
    /// `replayed` (401, `dpop_proof_replayed`, or `dpop_replay_store_full` when there is no room)
    /// if it was seen before.
    Proven {
        proof: ProofUse,
        decision: Box<Decision>,
        replayed: Box<Decision>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Decided(Decision),
    /// The named provider's keys are being fetched: park the request and evaluate it again.
    AwaitKeys(ProviderId),
    /// The opaque `token` must be introspected by `provider`: park the request, have it asked,
    /// and evaluate again with the answer.
    AwaitIntrospection {
        provider: ProviderId,
        token: String,
    },
}

/// Decides what happens to `request`, with the keys in `keys`, at `now_seconds` (Unix time),
/// verifying every token afresh.
/// Signatures are verified inside the VM.
pub fn evaluate(config: &Config, request: &Request, keys: &dyn KeyStore, now_seconds: u64) -> Outcome {
    evaluate_cached(config, request, keys, &Verifier::in_vm(), &mut TokenCache::disabled(), now_seconds)
}

/// The same, taking tokens verified before from `tokens` (and remembering new ones there).
/// Policies are evaluated on every request either way: they depend on more than the token.
/// No opaque token is known (each is refused as `introspection_failed`).
pub fn evaluate_cached(
    config: &Config,
    request: &Request,
    keys: &dyn KeyStore,
    verifier: &Verifier,
    tokens: &mut TokenCache,
    now_seconds: u64,
) -> Outcome {
    evaluate_with(config, request, keys, &NoAnswers, verifier, tokens, now_seconds)
}

/// The same, with the introspection answers in `answers` (the scheduler's).
pub fn evaluate_with(
    config: &Config,
    request: &Request,
    keys: &dyn KeyStore,
    answers: &dyn Answers,
    verifier: &Verifier,
    tokens: &mut TokenCache,
    now_seconds: u64,
) -> Outcome {
    let normalized = match path::normalize(&request.path) {
        Ok(normalized) => normalized,
        Err(err) => {
            let denial = match config.unsafe_paths {
                UnsafePathAction::Reject => Denial::BadPath(err),
                UnsafePathAction::Deny => Denial::UnsafePath(err),
            };
            return deny(request, "", denial, Vec::new());
        }
    };
    // Envoy's `source.address` is the client address its connection manager computed (from
    // X-Forwarded-For per its settings), which is what Istio's `remote.ip` is; it is the TCP peer
    // (`source.ip`) only where the configuration says the connection manager makes it so.
    let (source_ip, remote_ip) = match config.connection_reads.source_address {
        true => {
            let address = request.source_address.as_deref().and_then(cidr::parse_address);
            (address.filter(|_| config.peer_is_source_address), address)
        }
        // No rule reads them (and the host did not fetch the address).
        false => (None, None),
    };
    let mut input = MatchInput {
        path: &normalized,
        method: &request.method,
        host: &request.authority,
        port: request.destination_port,
        source_ip,
        remote_ip,
        peer: request.peer.as_ref(),
        sni: request.requested_server_name.as_deref(),
        destination_ip: request.destination_address.as_deref().and_then(cidr::parse_address),
        headers: &request.headers,
        identity: None,
    };
    let requirement = config.token_requirements.iter().find(|r| r.matcher.matches_request(&input));
    // A CORS preflight carries no credentials (browsers never send them): as Istio's jwt_authn
    // with `bypass_cors_preflight`, its tokens are not looked at and none is required; the
    // policies still decide, for an anonymous caller.
    let preflight = config
        .cors_preflight
        .bypasses(&request.method, |name| request.header_values(name).any(|value| !value.is_empty()));
    let required_providers = match requirement.map(|r| &r.action) {
        _ if preflight => None,
        Some(RequirementAction::SkipValidation) => None,
        Some(RequirementAction::RequireIssuers(providers)) => Some(providers.as_slice()),
        None => Some(&[][..]),
    };
    let authenticated = match required_providers {
        // Tokens on this path are not looked at: the request is anonymous.
        None => None,
        Some(providers) => {
            let mut found = extract::find_tokens(&config.issuers.locations, request);
            if !providers.is_empty() {
                // Only where the required issuers accept tokens, as Envoy's jwt_authn looks only
                // at the locations of the providers a route requires.
                found.retain(|token| {
                    providers
                        .iter()
                        .any(|&p| config.issuers.provider(p).is_some_and(|p| p.locations.contains(&token.location)))
                });
                if found.is_empty() {
                    let policy = requirement.map(|r| r.name.clone());
                    return deny(request, &normalized, Denial::MissingToken { policy }, Vec::new());
                }
            }
            let allowed = (!providers.is_empty()).then_some(providers);
            let proof = ProofRequest {
                method: &request.method,
                scheme: &request.scheme,
                authority: &request.authority,
                path: &request.path,
                proofs: request.header_values("dpop").collect(),
            };
            let authenticated = authn::authenticate(
                &config.issuers,
                &found,
                keys,
                verifier,
                tokens,
                now_seconds,
                allowed,
                &proof,
                answers,
            );
            match authenticated {
                AuthnOutcome::Anonymous => None,
                AuthnOutcome::Authenticated(authenticated) => Some(authenticated),
                AuthnOutcome::Rejected(err) => {
                    let mut outcome = deny(request, &normalized, Denial::InvalidToken(err), Vec::new());
                    if let (AuthnError::UnknownIssuer, Outcome::Decided(Decision::Deny { context, .. })) =
                        (err, &mut outcome)
                    {
                        context.token_issuer = unknown_issuer(config, &found);
                    }
                    return outcome;
                }
                AuthnOutcome::AwaitKeys(provider) => return Outcome::AwaitKeys(provider),
                AuthnOutcome::AwaitIntrospection(provider, token) => {
                    return Outcome::AwaitIntrospection { provider, token }
                }
            }
        }
    };
    input.identity = authenticated.as_ref().map(|a| a.identity.as_ref());
    // Checked on every request, cached token or not, for every token the request carries.
    let bindings = authenticated.as_ref().map(|a| a.certificate_bindings.clone()).unwrap_or_default();
    let proof = authenticated.as_ref().and_then(|a| a.proof);
    let evaluation = config.policies.evaluate(&input);
    let notes = evaluation.notes;
    let outcome = match (evaluation.decision, authenticated) {
        (PolicyDecision::Allow, authenticated) => Outcome::Decided(Decision::Allow {
            principal: authenticated.as_ref().map(|a| a.identity.principal()),
            // Under a requirement (or for a preflight) some token locations went unread: clear
            // those too.
            changes: upstream_changes(config, authenticated.as_ref(), requirement.is_some() || preflight),
            notes,
        }),
        (PolicyDecision::Deny { policy }, None) => deny(request, &normalized, Denial::MissingToken { policy }, notes),
        (PolicyDecision::Deny { policy }, Some(_)) => deny(request, &normalized, Denial::Forbidden { policy }, notes),
    };
    // A bound token without its certificate is an invalid token: 401 whatever the policies said,
    // as for any other invalid token. Tokens bound to two certificates never both hold.
    let Outcome::Decided(decision) = outcome else { return outcome };
    let decision = match bindings.split_first() {
        None => decision,
        Some((first, rest)) => {
            let mismatch =
                deny(request, &normalized, Denial::InvalidToken(AuthnError::CertificateMismatch), Vec::new());
            let Outcome::Decided(mismatch) = mismatch else { return mismatch };
            if !rest.is_empty() {
                return Outcome::Decided(mismatch);
            }
            Decision::Bound { thumbprint: *first, decision: Box::new(decision), mismatch: Box::new(mismatch) }
        }
    };
    // A proven request's `jti` is recorded last, whatever the decision: a proof is used once.
    let Some(proof) = proof else { return Outcome::Decided(decision) };
    let replayed = deny(request, &normalized, Denial::InvalidToken(AuthnError::Dpop(DpopError::Replayed)), Vec::new());
    let Outcome::Decided(replayed) = replayed else { return replayed };
    Outcome::Decided(Decision::Proven { proof, decision: Box::new(decision), replayed: Box::new(replayed) })
}

#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn deny(request: &Request, normalized_path: &str, denial: Denial, notes: Vec<PolicyNote>) -> Outcome {
    let scheme = if request.scheme.is_empty() { "http" } else { &request.scheme };
    let realm = format!("{scheme}://{}{normalized_path}", request.authority);
    let context = DenyContext {
        method: request.method.clone(),
        request_id: request.header_values("x-request-id").next().map(str::to_string),
        token_issuer: None,
    };
    Outcome::Decided(Decision::Deny { denial, realm, notes, context })
}

/// The issuer the first token of `found` names that no `jwtRules` entry accepts there, for the
/// log line of an unknown-issuer denial. Only on that error path: the tokens are parsed again.
fn unknown_issuer(config: &Config, found: &[extract::FoundToken]) -> Option<String> {
    found.iter().find_map(|token| {
        let parsed = authn::jwt::parse_with_limits(&token.token, &config.issuers.limits).ok()?;
        let issuer = parsed.issuer()?;
        let known =
            config.issuers.providers.iter().any(|p| p.issuer == issuer && p.locations.contains(&token.location));
        (!known).then(|| issuer.to_string())
    })
}

/// Header changes for an allowed request: output headers are always cleared first (a client must
/// not be able to send its own `x-user`: Envoy's jwt_authn leaves them in place when no token is
/// present), token headers are removed unless forwarded, then claim outputs are written. Where a
/// token requirement left locations unread (validation skipped, or only some issuers' locations
/// read), every token header is removed unless forwarded: the upstream must never receive a token
/// nobody checked and take it for a verified one.
fn upstream_changes(config: &Config, authenticated: Option<&Authenticated>, unread: bool) -> Vec<HeaderChange> {
    let mut changes: Vec<HeaderChange> = config.output_headers.iter().cloned().map(HeaderChange::Remove).collect();
    if unread {
        for (index, location) in config.issuers.locations.iter().enumerate() {
            let index = LocationId(index);
            let forwarded =
                config.issuers.providers.iter().any(|p| p.forward_original_token && p.locations.contains(&index));
            if let (false, TokenLocation::Header { name, .. }) = (forwarded, location) {
                let change = HeaderChange::Remove(name.clone());
                if !changes.contains(&change) {
                    changes.push(change);
                }
            }
        }
    }
    let Some(authenticated) = authenticated else {
        return changes;
    };
    for token in &authenticated.tokens {
        let forward = config.issuers.provider(token.provider).is_some_and(|p| p.forward_original_token);
        let location = config.issuers.location(token.location);
        if let (false, Some(TokenLocation::Header { name, .. })) = (forward, location) {
            let change = HeaderChange::Remove(name.clone());
            if !changes.contains(&change) {
                changes.push(change);
            }
            // The proof goes with the token it proves: it names the token's hash (`ath`).
            if location.is_some_and(TokenLocation::is_dpop_scheme) {
                changes.push(HeaderChange::Remove("dpop".to_string()));
            }
        }
    }
    let Some(provider) = config.issuers.provider(authenticated.provider) else {
        return changes;
    };
    if let (Some(header), false) = (&provider.output_payload_to_header, authenticated.payload_segment.is_empty()) {
        changes.push(HeaderChange::Set(header.clone(), authenticated.payload_segment.clone()));
    }
    for output in &provider.output_claim_to_headers {
        let Some(value) = output.claim.lookup(&authenticated.identity.claims) else { continue };
        let value = claim_values(value, false).join(",");
        // Claims are signed, but still text from outside: never write a control character.
        if !value.is_empty() && !value.chars().any(char::is_control) {
            changes.push(HeaderChange::Set(output.header.clone(), value));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_arrive_as_envoy_serializes_them() {
        let reads = ConnectionReads { peer_certificate: true, destination_port: true, ..ConnectionReads::default() };
        let properties = Property::read_by(reads);
        assert_eq!(properties.first(), Some(&Property::DestinationPort));
        // The certificate's names only count after mTLS is known.
        let mtls = properties.iter().position(|p| *p == Property::Mtls).expect("mtls");
        assert!(properties.iter().skip(mtls + 1).any(|p| *p == Property::PeerUriSan));
        let mut request = Request::default();
        request.set_property(Property::DestinationPort, &8443i64.to_le_bytes());
        request.set_property(Property::PeerUriSan, b"spiffe://td/ns/a/sa/b");
        assert_eq!((request.destination_port, request.peer.clone()), (Some(8443), None), "no mTLS, no peer");
        request.set_property(Property::Mtls, &[1]);
        request.set_property(Property::PeerUriSan, b"spiffe://td/ns/a/sa/b");
        request.set_property(Property::PeerDnsSan, b"");
        request.set_property(Property::PeerSubject, b"CN=workload");
        assert_eq!(
            request.peer.clone().map(|p| p.names),
            Some(vec!["spiffe://td/ns/a/sa/b".into(), "CN=workload".into()])
        );
        request.set_property(Property::DestinationPort, b"short");
        assert_eq!(request.destination_port, None);
        request.set_property(Property::Mtls, &[0]);
        assert_eq!(request.peer, None);
    }
}
