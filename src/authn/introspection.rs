//! Opaque tokens (RFC 7662): a token that is not a JWS is asked about at the issuer's
//! introspection endpoint, and its answer (active, and the token's claims) stands in for a
//! verified JWT's claims: the same claim rules, bindings and policies judge it.
//!
//! Pure, like the rest of authentication: `Introspection::call` describes the HTTP request the
//! host makes (a form POST with the client's credentials, RFC 7662 §2.1), `Introspection::judge`
//! turns the answer into an identity or a refusal with how long it holds, and `Answers` is the
//! read interface the request path asks (the scheduler keeps the answers, per VM and in shared
//! data: `authn::answers`). Every failure fails closed: no answer, another status, a body that is
//! not a JSON object, an `active` that is not `true`.

use super::claims;
use super::jwt;
use super::{AuthnError, Provider};
use crate::base64url;
use crate::identity::Identity;
use crate::ids::ProviderId;
use crate::json::{self, Value};
use crate::keys::HttpTarget;
use std::fmt;
use std::rc::Rc;

/// Answers are reused at most this long by default (`introspection.cacheDuration`): a revoked
/// token is refused within it.
pub const DEFAULT_CACHE_DURATION_MS: u64 = 60_000;
/// How long a failed introspection (no answer, a bad one) is remembered in the VM that made it,
/// past the second it happened in: the requests waiting for it are refused, and an outage is not
/// asked again by every request of that second; the next second's first request asks again.
pub const FAILURE_MEMORY_SECONDS: u64 = 0;

/// `introspection` of a `jwtRules` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introspection {
    /// The endpoint (`endpoint`), e.g. Keycloak's `<issuer>/protocol/openid-connect/token/introspect`.
    pub target: HttpTarget,
    pub cluster: String,
    pub client_id: String,
    pub secret: ClientSecret,
    pub timeout_ms: u64,
    pub cache_duration_ms: u64,
}

/// The client secret, never written out (its `Debug` says where it comes from, not what it is).
#[derive(Clone, PartialEq, Eq)]
pub enum ClientSecret {
    /// `clientSecret`, or `clientSecretEnv` once read from the VM's environment.
    Inline(String),
    /// `clientSecretEnv` not read yet (the `check` command, which has no VM environment).
    Env(String),
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientSecret::Inline(_) => f.write_str("Inline(<redacted>)"),
            ClientSecret::Env(name) => write!(f, "Env({name:?})"),
        }
    }
}

/// Why an opaque token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectionError {
    /// The endpoint says the token is not active (unknown, expired, revoked).
    Inactive,
    /// No usable answer: the call failed or timed out, another status than 200, a body that is not
    /// a JSON object, or no client secret.
    Failed,
    /// The answer names another issuer (`iss`) than the entry's.
    IssuerMismatch,
    /// The answer's `token_type` says a refresh or ID token, not an access token.
    NotAnAccessToken,
}

impl IntrospectionError {
    pub fn code(self) -> &'static str {
        match self {
            IntrospectionError::Inactive => "introspection_inactive",
            IntrospectionError::Failed => "introspection_failed",
            IntrospectionError::IssuerMismatch => "introspection_issuer_mismatch",
            IntrospectionError::NotAnAccessToken => "introspection_not_access_token",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            IntrospectionError::Inactive => "Token is not active",
            IntrospectionError::Failed => "Token introspection failed",
            IntrospectionError::IssuerMismatch => "Token introspection names another issuer",
            IntrospectionError::NotAnAccessToken => "Token is not an access token",
        }
    }
}

/// An introspection the host must make: a POST to `cluster` (RFC 7662 §2.1).
#[derive(Clone, PartialEq, Eq)]
pub struct IntrospectionCall {
    pub provider: ProviderId,
    /// The token's answer key (`answer_key`): what the answer is filed under.
    pub key: [u8; 16],
    pub cluster: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub timeout_ms: u64,
    /// When the question was put (Unix seconds): an answer is fresh from then, and a later
    /// question's answer is never replaced by this one's.
    pub asked_at_seconds: u64,
}

// The call holds the token and the client's credentials: never in a log line or a panic message.
impl fmt::Debug for IntrospectionCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IntrospectionCall {{ provider: {}, cluster: {:?} }}", self.provider, self.cluster)
    }
}

/// What an answer comes to, and until when (Unix seconds) it may be reused.
#[derive(Debug, Clone)]
pub struct Judgement {
    pub result: Result<Rc<Identity>, AuthnError>,
    pub until_seconds: u64,
}

/// The answers known for opaque tokens, as the request path sees them.
pub trait Answers {
    /// The answer for `token` of `provider` if one is known and still holds at `now_seconds`.
    fn answer(&self, provider: ProviderId, token: &str, now_seconds: u64) -> Option<Result<Rc<Identity>, AuthnError>>;
    /// Whether a request may wait for an introspection (a request settled at its deadline may not).
    fn may_wait(&self) -> bool;
}

/// No opaque token is ever known: for callers without introspection (and the `evaluate` API).
pub struct NoAnswers;

impl Answers for NoAnswers {
    fn answer(&self, _: ProviderId, _: &str, _: u64) -> Option<Result<Rc<Identity>, AuthnError>> {
        Some(Err(AuthnError::Introspection(IntrospectionError::Failed)))
    }
    fn may_wait(&self) -> bool {
        false
    }
}

/// A token is opaque when it is not the three dot-separated segments of a compact JWS.
pub fn is_opaque(token: &str) -> bool {
    token.split('.').count() != 3
}

/// What an opaque token's answer is filed under: the first 16 bytes of SHA-256 of who answered
/// (the issuer, the endpoint and the client asking) and the token. Shared by every worker, so not
/// keyed by a VM's secret; another configuration sharing the VM id (another issuer or endpoint)
/// never finds this one's answers. The token itself is never kept.
pub fn answer_key(issuer: &str, introspection: &Introspection, token: &str) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in [issuer, &introspection.cluster, &introspection.target.authority, &introspection.target.path] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.update(introspection.client_id.as_bytes());
    hasher.update([0]);
    hasher.update(token.as_bytes());
    let digest = hasher.finalize();
    let mut key = [0u8; 16];
    key.iter_mut().zip(digest.iter()).for_each(|(out, byte)| *out = *byte);
    key
}

impl Introspection {
    /// Whether a call can be made: the client secret is known.
    pub fn can_call(&self) -> bool {
        matches!(self.secret, ClientSecret::Inline(_))
    }

    /// The request for `token`: `token=…&token_type_hint=access_token`, the client's credentials
    /// as HTTP Basic (RFC 6749 §2.3.1: each form-encoded first). `None` without a secret.
    pub fn call(&self, provider: ProviderId, issuer: &str, token: &str, now_seconds: u64) -> Option<IntrospectionCall> {
        let ClientSecret::Inline(secret) = &self.secret else { return None };
        let credentials = format!("{}:{}", form_encode(&self.client_id), form_encode(secret));
        let headers = vec![
            (":method", "POST".to_string()),
            (":path", self.target.path.clone()),
            (":authority", self.target.authority.clone()),
            ("content-type", "application/x-www-form-urlencoded".to_string()),
            ("accept", "application/json".to_string()),
            ("authorization", format!("Basic {}", base64_standard(credentials.as_bytes()))),
            ("user-agent", "jwt-authz".to_string()),
        ];
        Some(IntrospectionCall {
            provider,
            key: answer_key(issuer, self, token),
            cluster: self.cluster.clone(),
            headers,
            body: format!("token={}&token_type_hint=access_token", form_encode(token)),
            timeout_ms: self.timeout_ms,
            asked_at_seconds: now_seconds,
        })
    }

    /// Judges an answer (`status` and `body`; `None` when no response came) at `now_seconds`
    /// for `provider`: active, of this issuer, and passing the entry's claim rules (`exp`
    /// required unless `requireExpiration: false`, `clockSkew`, `maxLifetime`, `requiredClaims`,
    /// `audiences`). Held until `cacheDuration` from now, never past the token's `exp` (plus the
    /// skew); a failure only `FAILURE_MEMORY_SECONDS`.
    pub fn judge(&self, provider: &Provider, answer: Option<(u32, &[u8])>, now_seconds: u64) -> Judgement {
        let failed = |error| Judgement {
            result: Err(AuthnError::Introspection(error)),
            until_seconds: now_seconds.saturating_add(FAILURE_MEMORY_SECONDS),
        };
        let cache_until = now_seconds.saturating_add(self.cache_duration_ms / 1000);
        let Some((200, body)) = answer else { return failed(IntrospectionError::Failed) };
        let Ok(Value::Object(mut members)) = json::parse(body, json::Limits::DOCUMENT) else {
            return failed(IntrospectionError::Failed);
        };
        // RFC 7662 §2.2's `token_type` is optional; when it says refresh or ID token, the token
        // was never meant for a resource server (an endpoint may answer for any token it issued).
        let token_type = members.get("token_type").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
        if token_type.contains("refresh") || token_type == "id" || token_type == "id_token" {
            return Judgement {
                result: Err(AuthnError::Introspection(IntrospectionError::NotAnAccessToken)),
                until_seconds: cache_until,
            };
        }
        if members.remove("active").and_then(|active| active.as_bool()) != Some(true) {
            // Remembered as long as an active answer would be: revocation is not undone.
            return Judgement {
                result: Err(AuthnError::Introspection(IntrospectionError::Inactive)),
                until_seconds: cache_until,
            };
        }
        match members.get("iss") {
            None => {
                members.insert("iss".into(), Value::from(provider.issuer.as_str()));
            }
            Some(Value::String(issuer)) if *issuer == provider.issuer => {}
            Some(_) => return failed(IntrospectionError::IssuerMismatch),
        }
        let claims = match jwt::claims_of(members) {
            Ok(claims) => claims,
            Err(_) => return failed(IntrospectionError::Failed),
        };
        if let Err(error) = claims::validate(&claims, &provider.audiences, &provider.claims, now_seconds) {
            return Judgement { result: Err(AuthnError::Claims(error)), until_seconds: cache_until };
        }
        let until = claims::accepted_until(&claims, &provider.claims, now_seconds);
        let until_seconds = u64::try_from(until).unwrap_or_default().min(cache_until);
        let subject = claims.custom.get("sub").and_then(Value::as_str).unwrap_or_default().to_string();
        let identity = Identity { issuer: provider.issuer.clone(), subject, claims: claims.custom };
        Judgement { result: Ok(Rc::new(identity)), until_seconds }
    }
}

/// `application/x-www-form-urlencoded` (the HTML form encoding: unreserved characters as they are,
/// every other byte `%XX`).
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Standard base64 with padding (HTTP Basic), from the base64url encoder.
fn base64_standard(bytes: &[u8]) -> String {
    let mut text: String = base64url::encode(bytes)
        .chars()
        .map(|c| {
            if c == '-' {
                '+'
            } else if c == '_' {
                '/'
            } else {
                c
            }
        })
        .collect();
    while !text.len().is_multiple_of(4) {
        text.push('=');
    }
    text
}

#[cfg(test)]
mod tests;
