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

pub mod cidr;
mod matcher;
pub mod path;
mod peer;
mod reads;
mod requirement;
mod rule;

pub use cidr::{parse_address, Cidr};
pub use matcher::{HostMatch, PathMatch, PrincipalMatch, StringMatch};
pub use path::{PathError, PathTemplate, UnsafePathAction};
pub use peer::{Peer, PeerMatch};
pub use reads::ConnectionReads;
pub use requirement::{CorsPreflight, RequirementAction, TokenRequirement};
pub use rule::{Condition, ConditionKey, Operation, Rule, Source, ValueKind, ValueMatch};

use crate::identity::Identity;
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

#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub rules: Vec<Rule>,
    /// Evaluated and reported, never enforced (Istio's `istio.io/dry-run` annotation).
    pub dry_run: bool,
}

/// The claims space-delimited when nothing else is configured: RFC 8693 §4.2 `scope`, and
/// `permission` as Keycloak's authorization services write it (Istio's defaults too).
pub const DEFAULT_SPACE_DELIMITED_CLAIMS: [&str; 2] = ["scope", "permission"];

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
    /// The mTLS peer's certificate names; `None` without mTLS.
    pub peer: Option<&'a Peer>,
    /// The TLS server name the client asked for (`connection.sni`).
    pub sni: Option<&'a str>,
    /// The address the connection came in on (`destination.ip`).
    pub destination_ip: Option<IpAddr>,
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

#[cfg(test)]
mod tests;
