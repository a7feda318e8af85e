//! The mTLS peer's identity (Istio's `principals`, `namespaces`, `serviceAccounts`,
//! `trustDomains` and the `source.principal` / `source.namespace` keys), matched the way the RBAC
//! istiod generates matches it.
//!
//! Envoy's RBAC `authenticated` principal is only ever true on a TLS connection with a peer
//! certificate, and compares its matcher with each URI SAN, then each DNS SAN, then the subject.
//! Istio writes a principal `td/ns/n/sa/s` as the URI `spiffe://td/ns/n/sa/s` and turns namespaces,
//! service accounts and trust domains into anchored regular expressions over it (every character
//! of the user's value literal, `*` widened). Each such expression is compiled here into a small
//! pattern of literals and wildcards, matched in linear time with no regex engine.

use super::StringMatch;

/// What a connection's peer certificate offers for matching, in Envoy's order: the URI SAN, the
/// DNS SAN, the subject. Empty without mTLS (no certificate, or plaintext).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub names: Vec<String>,
}

/// One configured peer identity pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerMatch {
    /// Any of these anchored patterns matching any of the peer's names is a match.
    alternatives: Vec<Vec<Token>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// `.*`: any run of characters.
    Any,
    /// `.+`: a non-empty run.
    AnyNonEmpty,
    /// `[^/]*`: a run without `/` (one trust domain).
    AnyInSegment,
}

const SPIFFE: &str = "spiffe://";

impl PeerMatch {
    /// `principals` / `source.principal`: `td/ns/n/sa/s`, `prefix*`, `*suffix` or `*`, in the
    /// mesh's `trust_domains` (its trust domain first, then its aliases) as istiod rewrites them.
    pub fn principal(value: &str, trust_domains: &[String]) -> Result<PeerMatch, String> {
        StringMatch::parse(value)?;
        let alternatives = with_trust_domains(value, trust_domains)
            .iter()
            .map(|value| {
                if value == "*" {
                    vec![Token::AnyNonEmpty]
                } else if let Some(suffix) = value.strip_prefix('*') {
                    vec![Token::Literal(SPIFFE.into()), Token::Any, Token::Literal(suffix.into())]
                } else if let Some(prefix) = value.strip_suffix('*') {
                    vec![Token::Literal(format!("{SPIFFE}{prefix}")), Token::Any]
                } else {
                    vec![Token::Literal(format!("{SPIFFE}{value}"))]
                }
            })
            .collect();
        Ok(PeerMatch { alternatives })
    }

    /// `namespaces` / `source.namespace`: Istio's `.*/ns/<value>/.*`, `*` as `.*`.
    pub fn namespace(value: &str) -> Result<PeerMatch, String> {
        StringMatch::parse(value)?;
        let mut tokens = vec![Token::Any, Token::Literal("/ns/".into())];
        push_glob(&mut tokens, value, Token::Any);
        tokens.extend([Token::Literal("/".into()), Token::Any]);
        Ok(PeerMatch { alternatives: vec![tokens] })
    }

    /// `serviceAccounts`: `namespace/name` (no wildcards, as Istio validates), matched as
    /// `spiffe://.+/ns/<namespace>/(.+/|)sa/<name>(/.+)?`.
    pub fn service_account(value: &str) -> Result<PeerMatch, String> {
        let Some((namespace, name)) = value.split_once('/') else {
            return Err(format!(
                "{value_q}: write namespace/name (Istio reads a bare name in the policy's namespace, which a plugin \
                 configuration does not have)",
                value_q = crate::json::Quoted(value)
            ));
        };
        if namespace.is_empty() || name.is_empty() || name.contains('/') || value.contains('*') {
            return Err(format!(
                "{value_q}: expected namespace/name, without wildcards",
                value_q = crate::json::Quoted(value)
            ));
        }
        let mut alternatives = Vec::new();
        for middle in [true, false] {
            for tail in [true, false] {
                let mut tokens = vec![
                    Token::Literal(SPIFFE.into()),
                    Token::AnyNonEmpty,
                    Token::Literal(format!("/ns/{namespace}/")),
                ];
                if middle {
                    tokens.extend([Token::AnyNonEmpty, Token::Literal("/".into())]);
                }
                tokens.push(Token::Literal(format!("sa/{name}")));
                if tail {
                    tokens.extend([Token::Literal("/".into()), Token::AnyNonEmpty]);
                }
                alternatives.push(tokens);
            }
        }
        Ok(PeerMatch { alternatives })
    }

    /// `trustDomains`: `spiffe://<domain>/...`, `*` within the domain only; the mesh's trust
    /// domain or one of its aliases stands for all of them (istiod's ExpandTrustDomainAliases).
    pub fn trust_domain(value: &str, trust_domains: &[String]) -> Result<PeerMatch, String> {
        StringMatch::parse(value)?;
        if value.contains('/') {
            return Err(format!("{value_q}: a trust domain has no /", value_q = crate::json::Quoted(value)));
        }
        let domains = match trust_domains.iter().any(|domain| domain == value) {
            true => trust_domains.to_vec(),
            false => vec![value.to_string()],
        };
        let alternatives = domains
            .iter()
            .map(|domain| {
                let mut tokens = vec![Token::Literal(SPIFFE.into())];
                push_glob(&mut tokens, domain, Token::AnyInSegment);
                tokens.extend([Token::Literal("/".into()), Token::Any]);
                tokens
            })
            .collect();
        Ok(PeerMatch { alternatives })
    }

    pub fn matches(&self, peer: &Peer) -> bool {
        peer.names.iter().any(|name| self.alternatives.iter().any(|tokens| full_match(tokens, name.as_bytes())))
    }
}

/// istiod's `ReplaceTrustDomainAliases` for one principal: a `td/ns/n/sa/s` principal whose trust
/// domain is enforced (not `*`) and is one of `trust_domains` (by Istio's two-way wildcard match)
/// or `cluster.local` (which stands for the local trust domain) becomes one principal per trust
/// domain; anything else stays as written. Without this, `cluster.local/...` in a mesh whose trust
/// domain is another name would match no workload there, and a DENY on it nothing.
pub fn with_trust_domains(principal: &str, trust_domains: &[String]) -> Vec<String> {
    let parts: Vec<&str> = principal.split('/').collect();
    let (Some(domain), 5) = (parts.first().copied(), parts.len()) else { return vec![principal.to_string()] };
    let rest = parts.get(1..).unwrap_or_default().join("/");
    let in_bundle = trust_domains.iter().any(|known| domains_match(domain, known));
    if domain == "*" || !(in_bundle || domain == "cluster.local") {
        return vec![principal.to_string()];
    }
    let mut principals = Vec::new();
    for known in trust_domains {
        // A wildcard domain that covers this trust domain is kept as written.
        let principal = if suffix_match(known, domain) { principal.to_string() } else { format!("{known}/{rest}") };
        if !principals.contains(&principal) {
            principals.push(principal);
        }
    }
    principals
}

/// istiod's `stringMatch` of two trust domains: equal, or either a `*` / prefix / suffix pattern of
/// the other.
fn domains_match(a: &str, b: &str) -> bool {
    a == b || b == "*" || prefix_match(a, b) || prefix_match(b, a) || suffix_match(a, b) || suffix_match(b, a)
}

fn prefix_match(text: &str, pattern: &str) -> bool {
    pattern.strip_suffix('*').is_some_and(|prefix| text.starts_with(prefix))
}

fn suffix_match(text: &str, pattern: &str) -> bool {
    pattern.strip_prefix('*').is_some_and(|suffix| text.ends_with(suffix))
}

/// Literal text with each `*` as `wildcard`.
fn push_glob(tokens: &mut Vec<Token>, value: &str, wildcard: Token) {
    for (i, part) in value.split('*').enumerate() {
        if i > 0 {
            tokens.push(wildcard.clone());
        }
        if !part.is_empty() {
            tokens.push(Token::Literal(part.into()));
        }
    }
}

/// Whether `tokens` match the whole of `text`: the set of reachable positions is carried from
/// token to token (O(tokens × length), no backtracking).
fn full_match(tokens: &[Token], text: &[u8]) -> bool {
    let mut reachable = vec![false; text.len() + 1];
    if let Some(start) = reachable.first_mut() {
        *start = true;
    }
    for token in tokens {
        let mut next = vec![false; text.len() + 1];
        match token {
            Token::Literal(literal) => {
                let literal = literal.as_bytes();
                for (position, _) in reachable.iter().enumerate().filter(|(_, r)| **r) {
                    if text.get(position..position + literal.len()) == Some(literal) {
                        if let Some(slot) = next.get_mut(position + literal.len()) {
                            *slot = true;
                        }
                    }
                }
            }
            Token::Any | Token::AnyNonEmpty | Token::AnyInSegment => {
                // `run`: some reachable start lies before this position with every byte since it
                // allowed by the token.
                let mut run = false;
                for position in 0..next.len() {
                    if position > 0 {
                        let byte = text.get(position - 1).copied().unwrap_or_default();
                        let allowed = !matches!(token, Token::AnyInSegment) || byte != b'/';
                        run = allowed && (run || reachable.get(position - 1).copied().unwrap_or(false));
                    }
                    let here = reachable.get(position).copied().unwrap_or(false);
                    let empty_allowed = !matches!(token, Token::AnyNonEmpty);
                    if let Some(slot) = next.get_mut(position) {
                        *slot = run || (empty_allowed && here);
                    }
                }
            }
        }
        reachable = next;
    }
    reachable.last().copied().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Vec<String> {
        vec!["cluster.local".to_string()]
    }

    fn peer(name: &str) -> Peer {
        Peer { names: vec![name.to_string()] }
    }

    fn matches(m: &PeerMatch, name: &str) -> bool {
        m.matches(&peer(name))
    }

    #[test]
    fn principals_are_spiffe_uris() {
        let exact = PeerMatch::principal("cluster.local/ns/foo/sa/bar", &local()).expect("valid");
        assert!(matches(&exact, "spiffe://cluster.local/ns/foo/sa/bar"));
        assert!(!matches(&exact, "spiffe://cluster.local/ns/foo/sa/barx"));
        assert!(!matches(&exact, "cluster.local/ns/foo/sa/bar"));
        let prefix = PeerMatch::principal("cluster.local/ns/foo/*", &local()).expect("valid");
        assert!(matches(&prefix, "spiffe://cluster.local/ns/foo/sa/any"));
        assert!(!matches(&prefix, "spiffe://cluster.local/ns/foobar/sa/any"));
        let suffix = PeerMatch::principal("*/sa/bar", &local()).expect("valid");
        assert!(matches(&suffix, "spiffe://td/ns/x/sa/bar"));
        assert!(!matches(&suffix, "https://td/ns/x/sa/bar"));
        let any = PeerMatch::principal("*", &local()).expect("valid");
        assert!(matches(&any, "spiffe://td/ns/x/sa/y") && !matches(&any, ""));
        // No certificate, no principal: nothing to match, not even `*`.
        assert!(!any.matches(&Peer::default()));
    }

    #[test]
    fn principals_are_rewritten_into_the_mesh_trust_domains_as_istiod_does() {
        let td = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        // cluster.local stands for the local trust domain.
        assert_eq!(with_trust_domains("cluster.local/ns/shop/sa/cart", &td(&["foo.td"])), ["foo.td/ns/shop/sa/cart"]);
        let m = PeerMatch::principal("cluster.local/ns/shop/sa/cart", &td(&["foo.td"])).expect("valid");
        assert!(matches(&m, "spiffe://foo.td/ns/shop/sa/cart"));
        assert!(!matches(&m, "spiffe://cluster.local/ns/shop/sa/cart"));
        let bundle = td(&["cluster.local", "old.td"]);
        // Only five-part principals with an enforced trust domain are rewritten.
        assert_eq!(with_trust_domains("cluster.local/ns/foo/*", &bundle), ["cluster.local/ns/foo/*"]);
        assert_eq!(with_trust_domains("*/ns/foo/sa/bar", &bundle), ["*/ns/foo/sa/bar"]);
        assert_eq!(with_trust_domains("a/b/ns/foo/sa/bar", &bundle), ["a/b/ns/foo/sa/bar"]);
        assert_eq!(with_trust_domains("other/ns/foo/sa/bar", &bundle), ["other/ns/foo/sa/bar"]);
        // A wildcard domain covering a trust domain stays, the others are added.
        assert_eq!(
            with_trust_domains("*.local/ns/foo/sa/bar", &bundle),
            ["*.local/ns/foo/sa/bar", "old.td/ns/foo/sa/bar"]
        );
        let m = PeerMatch::principal("*.local/ns/foo/sa/bar", &bundle).expect("valid");
        assert!(matches(&m, "spiffe://old.td/ns/foo/sa/bar") && matches(&m, "spiffe://x.local/ns/foo/sa/bar"));
        // trustDomains: the mesh's domain or an alias stands for all of them.
        let m = PeerMatch::trust_domain("old.td", &bundle).expect("valid");
        assert!(matches(&m, "spiffe://cluster.local/ns/a/sa/b") && !matches(&m, "spiffe://other/ns/a/sa/b"));
    }

    #[test]
    fn trust_domain_aliases_widen_a_principal_to_each_domain() {
        let domains = vec!["cluster.local".to_string(), "old.td".to_string()];
        let m = PeerMatch::principal("cluster.local/ns/foo/sa/bar", &domains).expect("valid");
        assert!(matches(&m, "spiffe://old.td/ns/foo/sa/bar"));
        assert!(matches(&m, "spiffe://cluster.local/ns/foo/sa/bar"));
        assert!(!matches(&m, "spiffe://other/ns/foo/sa/bar"));
        let other = PeerMatch::principal("other/ns/foo/sa/bar", &domains).expect("valid");
        assert!(matches(&other, "spiffe://other/ns/foo/sa/bar"));
        assert!(!matches(&other, "spiffe://cluster.local/ns/foo/sa/bar"));
    }

    #[test]
    fn namespaces_and_service_accounts_follow_istios_expressions() {
        let ns = PeerMatch::namespace("foo").expect("valid");
        assert!(matches(&ns, "spiffe://td/ns/foo/sa/x"));
        assert!(!matches(&ns, "spiffe://td/ns/foobar/sa/x"));
        let prefix = PeerMatch::namespace("foo-*").expect("valid");
        assert!(matches(&prefix, "spiffe://td/ns/foo-1/sa/x") && !matches(&prefix, "spiffe://td/ns/bar/sa/x"));
        let sa = PeerMatch::service_account("shop/cart").expect("valid");
        for name in ["spiffe://td/ns/shop/sa/cart", "spiffe://td/ns/shop/x/sa/cart", "spiffe://td/ns/shop/sa/cart/v1"] {
            assert!(matches(&sa, name), "{name}");
        }
        for name in ["spiffe:///ns/shop/sa/cart", "spiffe://td/ns/shop/sa/cartx", "spiffe://td/ns/other/sa/cart"] {
            assert!(!matches(&sa, name), "{name}");
        }
        assert!(PeerMatch::service_account("cart").is_err() && PeerMatch::service_account("shop/c*").is_err());
        let td = PeerMatch::trust_domain("bad*", &["cluster.local".to_string()]).expect("valid");
        assert!(matches(&td, "spiffe://bad.example/ns/x/sa/y"));
        assert!(!matches(&td, "spiffe://good/ns/bad/sa/y"));
    }
}
