//! Authentication: turns the tokens found in a request into an identity or a rejection.
//!
//! Istio semantics: no token means no identity (authorization decides); any presented token that
//! fails a check rejects the request, even on a path that needs no identity.

use crate::claims::{self, ClaimsError};
use crate::config::Config;
use crate::extract::FoundToken;
use crate::jwks::KeySet;
use crate::jwt::{self, JwtError};
use crate::policy::Identity;
use crate::verify::{self, VerifyError};
use serde_json::Value;

/// Why a presented token was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthnError {
    Token(JwtError),
    /// No `jwtRules` entry has the token's `iss` (or accepts tokens where this one was found).
    UnknownIssuer,
    Signature(VerifyError),
    Claims(ClaimsError),
    /// The issuer's keys could not be fetched and none are cached.
    JwksUnavailable,
}

impl AuthnError {
    pub fn code(self) -> &'static str {
        match self {
            AuthnError::Token(err) => err.code(),
            AuthnError::UnknownIssuer => "jwt_unknown_issuer",
            AuthnError::Signature(err) => err.code(),
            AuthnError::Claims(err) => err.code(),
            AuthnError::JwksUnavailable => "jwks_fetch_failed",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            AuthnError::Token(err) => err.message(),
            AuthnError::UnknownIssuer => "Jwt issuer is not configured",
            AuthnError::Signature(err) => err.message(),
            AuthnError::Claims(err) => err.message(),
            AuthnError::JwksUnavailable => "Jwks remote fetch is failed",
        }
    }
}

/// What the key cache can offer for one provider's token right now.
pub enum KeyState<'a> {
    Ready(&'a KeySet),
    /// The request should wait for a fetch: the first one, or a refetch because the token's `kid`
    /// is not among the keys (the provider may have rotated them).
    Pending,
    /// No usable keys, and nothing worth waiting for (the last fetch failed).
    Unavailable,
}

/// Read access to each provider's current keys (by index into `Config::providers`), for a token
/// naming `kid`. A store answers for one instant (the key cache's `at(now)`).
pub trait KeyStore {
    fn key_state(&self, provider: usize, kid: Option<&str>) -> KeyState<'_>;
}

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub identity: Identity,
    /// Provider that verified the identity's token.
    pub provider: usize,
    /// That token's payload segment (base64url), for `outputPayloadToHeader`.
    pub payload_segment: String,
    /// Every token in the request: `(location, provider)`, all verified.
    pub tokens: Vec<(usize, usize)>,
}

#[derive(Debug)]
pub enum AuthnOutcome {
    Anonymous,
    Authenticated(Authenticated),
    Rejected(AuthnError),
    /// Keys of this provider are being fetched; evaluate again when they arrive.
    AwaitKeys(usize),
}

/// Verifies every token found. All must pass; the first one is the identity.
pub fn authenticate(config: &Config, found: &[FoundToken], keys: &dyn KeyStore, now_seconds: u64) -> AuthnOutcome {
    authenticate_among(config, found, keys, now_seconds, None)
}

/// `authenticate`, accepting only tokens of the `allowed` providers (indices into
/// `Config::providers`) when given: another configured issuer's token is then an unknown issuer,
/// as in Envoy's jwt_authn when a route requires one provider.
pub fn authenticate_among(
    config: &Config,
    found: &[FoundToken],
    keys: &dyn KeyStore,
    now_seconds: u64,
    allowed: Option<&[usize]>,
) -> AuthnOutcome {
    let mut result: Option<Authenticated> = None;
    for token in found {
        let (provider, identity, payload_segment) = match verify_token(config, token, keys, now_seconds, allowed) {
            Ok(verified) => verified,
            Err(Err(provider)) => return AuthnOutcome::AwaitKeys(provider),
            Err(Ok(error)) => return AuthnOutcome::Rejected(error),
        };
        match &mut result {
            None => {
                result = Some(Authenticated {
                    identity,
                    provider,
                    payload_segment,
                    tokens: vec![(token.location, provider)],
                });
            }
            Some(first) => first.tokens.push((token.location, provider)),
        }
    }
    match result {
        Some(authenticated) => AuthnOutcome::Authenticated(authenticated),
        None => AuthnOutcome::Anonymous,
    }
}

/// `Err(Ok(e))`: rejected; `Err(Err(p))`: must wait for provider `p`'s keys.
type Verified = Result<(usize, Identity, String), Result<AuthnError, usize>>;

fn verify_token(
    config: &Config,
    found: &FoundToken,
    keys: &dyn KeyStore,
    now_seconds: u64,
    allowed: Option<&[usize]>,
) -> Verified {
    let parsed = jwt::parse_with_limits(&found.token, &config.limits.token).map_err(|e| Ok(AuthnError::Token(e)))?;
    let issuer = parsed.issuer().ok_or(Ok(AuthnError::UnknownIssuer))?;
    let provider_index = config
        .providers
        .iter()
        .enumerate()
        .position(|(index, p)| {
            p.issuer == issuer
                && p.locations.contains(&found.location)
                && allowed.is_none_or(|allowed| allowed.contains(&index))
        })
        .ok_or(Ok(AuthnError::UnknownIssuer))?;
    let provider = config.providers.get(provider_index).ok_or(Ok(AuthnError::UnknownIssuer))?;
    let key_set = match keys.key_state(provider_index, parsed.kid.as_deref()) {
        KeyState::Ready(key_set) => key_set,
        KeyState::Pending => return Err(Err(provider_index)),
        KeyState::Unavailable => return Err(Ok(AuthnError::JwksUnavailable)),
    };
    verify::verify_rs256(key_set, parsed.kid.as_deref(), parsed.signing_input.as_bytes(), &parsed.signature)
        .map_err(|e| Ok(AuthnError::Signature(e)))?;
    claims::validate(&parsed.claims, &provider.audiences, now_seconds).map_err(|e| Ok(AuthnError::Claims(e)))?;
    let subject = parsed.claims.custom.get("sub").and_then(Value::as_str).unwrap_or_default().to_string();
    let identity = Identity { issuer: issuer.to_string(), subject, claims: parsed.claims.custom.clone() };
    Ok((provider_index, identity, parsed.payload_segment.to_string()))
}
