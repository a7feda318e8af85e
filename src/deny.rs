//! Deny responses: the one place that maps every denial to its HTTP status, headers and body.
//!
//! We depart from Istio on purpose: it answers 403 to a request that simply lacks a token. Here a
//! denied request without a valid identity gets 401 with an RFC 6750 challenge ("who are you?"),
//! and only an authenticated caller who may not do this gets 403 ("you may not").

use crate::authn::dpop::DpopError;
use crate::authn::AuthnError;
use crate::authz::path::PathError;
use crate::keys::alg::Algorithm;

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The path could not be normalized unambiguously (`unsafePaths: REJECT`, the default).
    BadPath(PathError),
    /// The same, answered as a denial (`unsafePaths: DENY`).
    UnsafePath(PathError),
    /// Policy denied a request that carried no token.
    MissingToken { policy: Option<String> },
    /// A token was presented and rejected.
    InvalidToken(AuthnError),
    /// Policy denied an authenticated caller.
    Forbidden { policy: Option<String> },
}

/// What the deny log line says about the request besides the denial, for operators: the method,
/// Envoy's `x-request-id` (to find the request in the access log), and for a token of an issuer no
/// `jwtRules` entry has, the issuer it named (the classic Keycloak hostname or trailing-slash
/// mismatch). Never the token. The values are the client's: `loggable` bounds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyContext {
    pub method: String,
    pub request_id: Option<String>,
    pub token_issuer: Option<String>,
}

/// At most `MAX_LOGGED_CHARS` of `text`, with spaces, quotes, backslashes and control characters
/// replaced by `_`: a client-chosen value cannot forge another field or line of the log.
pub fn loggable(text: &str) -> String {
    text.chars()
        .take(MAX_LOGGED_CHARS)
        .map(|c| if c.is_control() || c.is_whitespace() || matches!(c, '"' | '\\') { '_' } else { c })
        .collect()
}

/// Longest client-chosen value a deny log line carries.
const MAX_LOGGED_CHARS: usize = 128;

/// A complete local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyResponse {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// Envoy's response code details (`%RESPONSE_CODE_DETAILS%` in access logs), shaped as the
    /// native filters write theirs (`jwt_authn_access_denied{…}`,
    /// `rbac_access_denied_matched_policy[…]`): `jwt_authz_denied{<reason>}` for a token or path
    /// denial, `jwt_authz_access_denied[<policy>]` (`[none]` when no ALLOW rule matched) for a
    /// policy's. No whitespace: Envoy requires details without it.
    pub details: String,
}

impl Denial {
    /// Stable reason code, for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Denial::BadPath(err) | Denial::UnsafePath(err) => err.code(),
            Denial::MissingToken { .. } => "jwt_missing",
            Denial::InvalidToken(err) => err.code(),
            Denial::Forbidden { .. } => "rbac_access_denied",
        }
    }

    /// The policy that denied, when one did (`None` also when no ALLOW policy matched).
    pub fn policy(&self) -> Option<&str> {
        match self {
            Denial::MissingToken { policy } | Denial::Forbidden { policy } => policy.as_deref(),
            Denial::BadPath(_) | Denial::UnsafePath(_) | Denial::InvalidToken(_) => None,
        }
    }

    /// The log line of a denial answered with `status`: the reason code and deciding policy (also
    /// the tags of its counter, `metrics::denied`), the request's method and id, the issuer an
    /// unknown-issuer token named, and the resource last.
    pub fn log_line(&self, status: u32, realm: &str, context: &DenyContext) -> String {
        let mut line = format!(
            "denied {status} reason={} policy={} method={}",
            self.code(),
            self.policy().unwrap_or("-"),
            loggable(&context.method)
        );
        if let Some(id) = &context.request_id {
            line.push_str(&format!(" request_id={}", loggable(id)));
        }
        if let Some(issuer) = &context.token_issuer {
            line.push_str(&format!(" token_issuer={}", loggable(issuer)));
        }
        line.push_str(&format!(" resource={realm}"));
        line
    }

    /// The reply. `realm` is the protected resource's URL; it is quoted, so it is sanitized here.
    pub fn response(&self, realm: &str) -> DenyResponse {
        let realm = quoted_string_safe(realm);
        let (status, challenge, body) = match self {
            Denial::BadPath(err) => (400, None, err.message()),
            // No challenge: no token could make this path acceptable.
            Denial::UnsafePath(_) => (403, None, "RBAC: access denied"),
            Denial::MissingToken { .. } => (401, Some(format!("Bearer realm=\"{realm}\"")), "Jwt is missing"),
            // The proof may be fine; the store that must remember it is not: not the client's fault.
            Denial::InvalidToken(AuthnError::Dpop(DpopError::ReplayStoreFull)) => {
                (503, None, DpopError::ReplayStoreFull.message())
            }
            // RFC 9449 §7.1: the DPoP scheme's challenge, naming the proof algorithms accepted.
            Denial::InvalidToken(AuthnError::Dpop(err)) => (
                401,
                Some(format!(
                    "DPoP realm=\"{realm}\", algs=\"{}\", error=\"{}\", error_description=\"{}\"",
                    dpop_algorithms(),
                    if err.is_proof_error() { "invalid_dpop_proof" } else { "invalid_token" },
                    err.message()
                )),
                err.message(),
            ),
            Denial::InvalidToken(err) => (
                401,
                Some(format!(
                    "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                    err.message()
                )),
                err.message(),
            ),
            Denial::Forbidden { .. } => {
                (403, Some(format!("Bearer realm=\"{realm}\", error=\"insufficient_scope\"")), "RBAC: access denied")
            }
        };
        let mut headers = vec![("content-type", "text/plain".to_string())];
        if let Some(challenge) = challenge {
            headers.push(("www-authenticate", challenge));
        }
        DenyResponse { status, headers, body: body.to_string(), details: self.details() }
    }

    fn details(&self) -> String {
        match self {
            Denial::Forbidden { policy } => {
                let policy: String = policy
                    .as_deref()
                    .unwrap_or("none")
                    .chars()
                    .take(MAX_LOGGED_CHARS)
                    .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
                    .collect();
                format!("jwt_authz_access_denied[{policy}]")
            }
            _ => format!("jwt_authz_denied{{{}}}", self.code()),
        }
    }
}

/// The proof algorithms a DPoP challenge names: every algorithm we verify.
fn dpop_algorithms() -> String {
    Algorithm::ALL.iter().map(|alg| alg.name()).collect::<Vec<_>>().join(" ")
}

/// Drops what cannot appear inside an RFC 7230 quoted-string without escaping.
fn quoted_string_safe(text: &str) -> String {
    text.chars().filter(|c| !matches!(c, '"' | '\\') && !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::claims::ClaimsError;

    #[test]
    fn log_lines_carry_the_request_and_cannot_be_forged_by_it() {
        let context = DenyContext {
            method: "GET".into(),
            request_id: Some("abc 123\nresource=http://evil/".into()),
            token_issuer: Some(format!("https://idp/realms/shop/{}", "x".repeat(300))),
        };
        let line = Denial::InvalidToken(AuthnError::UnknownIssuer).log_line(401, "http://shop/api", &context);
        assert!(line.starts_with("denied 401 reason=jwt_unknown_issuer policy=- method=GET request_id=abc_123_resource=http://evil/ token_issuer=https://idp/realms/shop/xxx"), "{line}");
        assert!(line.ends_with(" resource=http://shop/api"), "{line}");
        assert!(!line.contains('\n'));
        assert_eq!(line.matches("resource=").count(), 2, "the forged one is inside request_id");
        assert!(line.len() < 400);
        let plain = Denial::Forbidden { policy: Some("p".into()) }.log_line(403, "http://s/x", &DenyContext::default());
        assert_eq!(plain, "denied 403 reason=rbac_access_denied policy=p method= resource=http://s/x");
    }

    #[test]
    fn status_and_challenge_per_denial() {
        let realm = "http://shop/api";
        let expired = Denial::InvalidToken(AuthnError::Claims(ClaimsError::Expired)).response(realm);
        assert_eq!(expired.status, 401);
        assert_eq!(expired.body, "Jwt is expired");
        assert!(expired.headers.contains(&(
            "www-authenticate",
            "Bearer realm=\"http://shop/api\", error=\"invalid_token\", error_description=\"Jwt is expired\"".into()
        )));
        let missing = Denial::MissingToken { policy: None }.response(realm);
        assert_eq!((missing.status, missing.body.as_str()), (401, "Jwt is missing"));
        assert!(missing.headers.contains(&("www-authenticate", "Bearer realm=\"http://shop/api\"".into())));
        let forbidden = Denial::Forbidden { policy: Some("p".into()) }.response(realm);
        assert_eq!((forbidden.status, forbidden.body.as_str()), (403, "RBAC: access denied"));
        assert!(forbidden
            .headers
            .contains(&("www-authenticate", "Bearer realm=\"http://shop/api\", error=\"insufficient_scope\"".into())));
        let bad_path = Denial::BadPath(PathError::EncodedSlash).response(realm);
        assert_eq!(bad_path.status, 400);
        assert!(!bad_path.headers.iter().any(|(name, _)| *name == "www-authenticate"));
        let unsafe_path = Denial::UnsafePath(PathError::EncodedSlash).response(realm);
        assert_eq!((unsafe_path.status, unsafe_path.body.as_str()), (403, "RBAC: access denied"));
        assert!(!unsafe_path.headers.iter().any(|(name, _)| *name == "www-authenticate"));
        assert_eq!(Denial::UnsafePath(PathError::EncodedSlash).code(), "path_encoded_slash");
    }

    #[test]
    fn dpop_denials_challenge_with_the_dpop_scheme() {
        use crate::authn::dpop::DpopError;
        let realm = "http://shop/api";
        let challenge = |error: DpopError| {
            let response = Denial::InvalidToken(AuthnError::Dpop(error)).response(realm);
            let header = response.headers.iter().find(|(name, _)| *name == "www-authenticate").map(|(_, v)| v.clone());
            (response.status, header)
        };
        let algs = "RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512 EdDSA";
        let (status, replayed) = challenge(DpopError::Replayed);
        assert_eq!(status, 401);
        assert_eq!(
            replayed.as_deref(),
            Some(format!("DPoP realm=\"http://shop/api\", algs=\"{algs}\", error=\"invalid_dpop_proof\", error_description=\"DPoP proof was used before\"").as_str())
        );
        let (_, downgrade) = challenge(DpopError::BearerDowngrade);
        assert!(downgrade.is_some_and(|h| h.starts_with("DPoP ") && h.contains("error=\"invalid_token\"")));
        assert_eq!(challenge(DpopError::ReplayStoreFull), (503, None));
        for error in DpopError::ALL {
            let (status, header) = challenge(error);
            assert!(status == 503 || header.is_some_and(|h| h.starts_with("DPoP realm=")), "{error:?}");
        }
    }

    #[test]
    fn response_code_details_name_the_reason_or_the_policy_without_whitespace() {
        let realm = "http://shop/api";
        let expired = Denial::InvalidToken(AuthnError::Claims(ClaimsError::Expired)).response(realm);
        assert_eq!(expired.details, "jwt_authz_denied{jwt_expired}");
        let missing = Denial::MissingToken { policy: Some("needs-token".into()) }.response(realm);
        assert_eq!(missing.details, "jwt_authz_denied{jwt_missing}");
        assert_eq!(
            Denial::BadPath(PathError::EncodedSlash).response(realm).details,
            "jwt_authz_denied{path_encoded_slash}"
        );
        let forbidden = Denial::Forbidden { policy: Some("deny internal\n[x]".into()) }.response(realm);
        assert_eq!(forbidden.details, "jwt_authz_access_denied[deny_internal__x_]");
        assert_eq!(Denial::Forbidden { policy: None }.response(realm).details, "jwt_authz_access_denied[none]");
    }

    #[test]
    fn realm_cannot_break_out_of_its_quotes() {
        let response = Denial::MissingToken { policy: None }.response("http://h/a\"b\\c\r\n");
        assert!(response.headers.contains(&("www-authenticate", "Bearer realm=\"http://h/abc\"".into())));
    }
}
