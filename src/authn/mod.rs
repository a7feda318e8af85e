//! Authentication: turns the tokens found in a request into an identity or a rejection.
//!
//! Istio semantics: no token means no identity (authorization decides); any presented token that
//! fails a check rejects the request, even on a path that needs no identity.

pub mod claims;
pub mod extract;
pub mod jwt;

mod provider;

pub mod token_cache;
pub mod verify;

pub use provider::{ClaimToHeader, Provider};

use crate::config::Config;
use crate::identity::Identity;
use crate::keys::{KeyState, KeyStore};
use claims::{ClaimsError, CLOCK_SKEW_SECONDS};
use extract::FoundToken;
use jwt::{JwtError, ParsedToken};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::rc::Rc;
use token_cache::{TokenCache, TokenDigest, Verification};
use verify::VerifyError;

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

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Shared with the token cache.
    pub identity: Rc<Identity>,
    /// Provider that verified the identity's token.
    pub provider: usize,
    /// That token's payload segment (base64url) when the provider has `outputPayloadToHeader`,
    /// else empty.
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

/// Verifies every token found, afresh. All must pass; the first one is the identity.
pub fn authenticate(config: &Config, found: &[FoundToken], keys: &dyn KeyStore, now_seconds: u64) -> AuthnOutcome {
    authenticate_among(config, found, keys, &mut TokenCache::disabled(), now_seconds, None)
}

/// Verifies every token found, taking tokens verified before from `cache` while their
/// verification holds (and remembering new ones there). Only tokens of the `allowed` providers
/// (indices into `Config::providers`) are accepted when given: another configured issuer's token
/// is then an unknown issuer, as in Envoy's jwt_authn when a route requires one provider.
pub fn authenticate_among(
    config: &Config,
    found: &[FoundToken],
    keys: &dyn KeyStore,
    cache: &mut TokenCache,
    now_seconds: u64,
    allowed: Option<&[usize]>,
) -> AuthnOutcome {
    let mut result: Option<Authenticated> = None;
    for token in found {
        let (provider, identity) = match verify_token(config, token, keys, cache, now_seconds, allowed) {
            Ok(verified) => verified,
            Err(Err(provider)) => return AuthnOutcome::AwaitKeys(provider),
            Err(Ok(error)) => return AuthnOutcome::Rejected(error),
        };
        match &mut result {
            None => {
                let wants_payload =
                    config.providers.get(provider).is_some_and(|p| p.output_payload_to_header.is_some());
                let payload_segment = match wants_payload {
                    true => token.token.split('.').nth(1).unwrap_or_default().to_string(),
                    false => String::new(),
                };
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
type Verified = Result<(usize, Rc<Identity>), Result<AuthnError, usize>>;

fn verify_token(
    config: &Config,
    found: &FoundToken,
    keys: &dyn KeyStore,
    cache: &mut TokenCache,
    now_seconds: u64,
    allowed: Option<&[usize]>,
) -> Verified {
    let holds = |verification: &Verification| {
        cached_verification_holds(config, keys, found, verification, now_seconds, allowed)
    };
    if let Some((verification, identity)) = cache.identity(&found.token, holds) {
        if keys_ready(keys, verification.provider) {
            return Ok((verification.provider, identity));
        }
    }
    let parsed = jwt::parse_with_limits(&found.token, &config.limits.token).map_err(|e| Ok(AuthnError::Token(e)))?;
    let signing_input_digest = Sha256::digest(parsed.signing_input.as_bytes());
    let digest = TokenDigest::of_signed(&signing_input_digest, &parsed.signature);
    if let Some(verification) = cache.verification(&digest, holds) {
        if keys_ready(keys, verification.provider) {
            // Verified before, but its identity is no longer cached: skip the RSA, not the parsing.
            let identity = identity_of(parsed)?;
            cache.insert_identity(&found.token, verification, identity.clone());
            return Ok((verification.provider, identity));
        }
    }
    let issuer = parsed.issuer().ok_or(Ok(AuthnError::UnknownIssuer))?;
    let provider_index = provider_for(config, issuer, found.location, allowed).ok_or(Ok(AuthnError::UnknownIssuer))?;
    let provider = config.providers.get(provider_index).ok_or(Ok(AuthnError::UnknownIssuer))?;
    let key_set = match keys.key_state(provider_index, parsed.kid.as_deref()) {
        KeyState::Ready(key_set) => key_set,
        KeyState::Pending => return Err(Err(provider_index)),
        KeyState::Unavailable => return Err(Ok(AuthnError::JwksUnavailable)),
    };
    // Read before verifying: a key set replaced after this point must not vouch for this result.
    let keys_version = keys.keys_version(provider_index);
    verify::verify_rs256_digest(key_set, parsed.kid.as_deref(), &signing_input_digest, &parsed.signature)
        .map_err(|e| Ok(AuthnError::Signature(e)))?;
    claims::validate(&parsed.claims, &provider.audiences, now_seconds).map_err(|e| Ok(AuthnError::Claims(e)))?;
    // `claims::validate` requires `exp`, so every remembered verification has an end; the
    // `Option` stays checked so that a change there can never make one last forever.
    let expiration = parsed.claims.expiration.map(|exp| exp.timestamp());
    let identity = identity_of(parsed)?;
    if let (Some(expiration), Some(keys_version)) = (expiration, keys_version) {
        let accepted_until = expiration.saturating_add(CLOCK_SKEW_SECONDS as i64);
        let verification = Verification { provider: provider_index, accepted_until, keys_version };
        cache.insert(&found.token, digest, verification, identity.clone());
    }
    Ok((provider_index, identity))
}

/// The provider for a token of `issuer` found at `location`: the first `jwtRules` entry with that
/// issuer that accepts tokens there (and is `allowed`, when only some are).
fn provider_for(config: &Config, issuer: &str, location: usize, allowed: Option<&[usize]>) -> Option<usize> {
    config.providers.iter().enumerate().position(|(index, p)| {
        p.issuer == issuer && p.locations.contains(&location) && allowed.is_none_or(|allowed| allowed.contains(&index))
    })
}

/// A cached verification is used only if, now, the token would still be judged by the same
/// provider (it may have been verified where another rule applies, or a token requirement may
/// allow other issuers here), that provider's keys are the ones it was verified with, and the
/// token's time window is open. Nothing else it was checked against can change while the
/// configuration, and with it the cache, stays the same.
fn cached_verification_holds(
    config: &Config,
    keys: &dyn KeyStore,
    found: &FoundToken,
    verification: &Verification,
    now_seconds: u64,
    allowed: Option<&[usize]>,
) -> bool {
    let Some(provider) = config.providers.get(verification.provider) else { return false };
    provider_for(config, &provider.issuer, found.location, allowed) == Some(verification.provider)
        && verification.holds(now_seconds, keys.keys_version(verification.provider))
}

/// The key lookup a fresh verification would make, so that cached tokens count as JWKS cache hits
/// too; it always succeeds while `keys_version` is `Some`.
fn keys_ready(keys: &dyn KeyStore, provider: usize) -> bool {
    matches!(keys.key_state(provider, None), KeyState::Ready(_))
}

fn identity_of(parsed: ParsedToken<'_>) -> Result<Rc<Identity>, Result<AuthnError, usize>> {
    let issuer = parsed.issuer().ok_or(Ok(AuthnError::UnknownIssuer))?.to_string();
    let subject = parsed.claims.custom.get("sub").and_then(Value::as_str).unwrap_or_default().to_string();
    Ok(Rc::new(Identity { issuer, subject, claims: parsed.claims.custom }))
}
