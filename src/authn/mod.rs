//! Authentication: turns the tokens found in a request into an identity or a rejection.
//!
//! Istio semantics: no token means no identity (authorization decides); any presented token that
//! fails a check rejects the request, even on a path that needs no identity.

pub mod answers;
pub mod binding;
pub mod claims;
pub mod dpop;
pub mod extract;
pub mod introspection;
pub mod jwt;
mod provider;
pub mod replay;
pub mod token_cache;
pub mod verify;

pub use provider::{ClaimToHeader, Provider};

use crate::identity::Identity;
use crate::ids::ProviderId;
use crate::json::Value;
use crate::keys::{KeyState, KeyStore};
use claims::ClaimsError;
use dpop::{DpopError, ProofRequest, ProofUse};
use extract::{FoundToken, LocationId, TokenLocation};
use introspection::{Answers, IntrospectionError};
use jwt::{JwtError, ParsedToken, TokenLimits};
use std::rc::Rc;
use token_cache::{TokenCache, Verification};
use verify::{Verifier, VerifyError};

/// Why a presented token was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthnError {
    /// The token is not a well-formed, acceptable JWS (see `JwtError`).
    Token(JwtError),
    /// No `jwtRules` entry has the token's `iss` (or accepts tokens where this one was found).
    UnknownIssuer,
    /// No key verifies the signature (see `VerifyError`).
    Signature(VerifyError),
    /// The signature holds but the claims do not (see `ClaimsError`).
    Claims(ClaimsError),
    /// The issuer's keys could not be fetched and none are cached.
    JwksUnavailable,
    /// The token is bound to a client certificate (`cnf.x5t#S256`, RFC 8705) that the connection
    /// does not present.
    CertificateMismatch,
    /// The token's DPoP binding does not hold on this request (see `DpopError`).
    Dpop(DpopError),
    /// An opaque token's introspection refused it (see `IntrospectionError`).
    Introspection(IntrospectionError),
}

impl AuthnError {
    /// Stable reason code, for logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            AuthnError::Token(err) => err.code(),
            AuthnError::UnknownIssuer => "jwt_unknown_issuer",
            AuthnError::Signature(err) => err.code(),
            AuthnError::Claims(err) => err.code(),
            AuthnError::JwksUnavailable => "jwks_fetch_failed",
            AuthnError::CertificateMismatch => "jwt_certificate_mismatch",
            AuthnError::Dpop(err) => err.code(),
            AuthnError::Introspection(err) => err.code(),
        }
    }

    /// The `error_description` of the challenge: Envoy's jwt_authn wording, which clients match on.
    pub fn message(self) -> &'static str {
        match self {
            AuthnError::Token(err) => err.message(),
            AuthnError::UnknownIssuer => "Jwt issuer is not configured",
            AuthnError::Signature(err) => err.message(),
            AuthnError::Claims(err) => err.message(),
            AuthnError::JwksUnavailable => "Jwks remote fetch is failed",
            AuthnError::CertificateMismatch => "Jwt is bound to a client certificate the connection does not present",
            AuthnError::Dpop(err) => err.message(),
            AuthnError::Introspection(err) => err.message(),
        }
    }
}

/// Everything authentication needs from the configuration: the trusted issuers, every place
/// their tokens may be, and the bounds on a token. Compiled once from `jwtRules` and `limits`.
#[derive(Debug)]
pub struct Issuers {
    /// Indexed by `ProviderId`, in `jwtRules` order.
    pub providers: Vec<Provider>,
    /// Every distinct place a token may be, across all providers, in the order they are tried;
    /// indexed by `LocationId`.
    pub locations: Vec<TokenLocation>,
    pub limits: TokenLimits,
    /// Every provider, ordered by issuer (`by_issuer`): a token's issuer is found by binary
    /// search, so a request costs the same with 1 or 100 `jwtRules` entries.
    by_issuer: Vec<ProviderId>,
}

impl Issuers {
    /// The compiled `jwtRules` (each issuer once: compiling refuses a repeated one).
    pub fn new(providers: Vec<Provider>, locations: Vec<TokenLocation>, limits: TokenLimits) -> Issuers {
        let mut by_issuer: Vec<ProviderId> = Vec::with_capacity(providers.len());
        for (index, provider) in providers.iter().enumerate() {
            let at = by_issuer.partition_point(|id| {
                providers.get(id.index()).is_some_and(|other| other.issuer.as_str() < provider.issuer.as_str())
            });
            by_issuer.insert(at, ProviderId(index));
        }
        Issuers { providers, locations, limits, by_issuer }
    }

    pub fn provider(&self, id: ProviderId) -> Option<&Provider> {
        self.providers.get(id.index())
    }

    pub fn location(&self, id: LocationId) -> Option<&TokenLocation> {
        self.locations.get(id.0)
    }

    /// Every provider with its id.
    pub fn iter(&self) -> impl Iterator<Item = (ProviderId, &Provider)> {
        self.providers.iter().enumerate().map(|(index, provider)| (ProviderId(index), provider))
    }

    /// The provider for a token of `issuer` found at `location`: the `jwtRules` entry with that
    /// issuer, if it accepts tokens there (and is `allowed`, when only some are).
    fn provider_for(&self, issuer: &str, location: LocationId, allowed: Option<&[ProviderId]>) -> Option<ProviderId> {
        let found = self.by_issuer.binary_search_by(|id| {
            self.provider(*id).map_or(std::cmp::Ordering::Less, |p| p.issuer.as_str().cmp(issuer))
        });
        let id = *self.by_issuer.get(found.ok()?)?;
        let provider = self.provider(id)?;
        (provider.locations.contains(&location) && allowed.is_none_or(|allowed| allowed.contains(&id))).then_some(id)
    }

    /// The entry that introspects opaque tokens found at `location` (configuration allows one
    /// per location), if it is `allowed`.
    fn introspector_for(&self, location: LocationId, allowed: Option<&[ProviderId]>) -> Option<ProviderId> {
        self.iter()
            .find(|(_, p)| p.introspection.is_some() && p.locations.contains(&location))
            .map(|(id, _)| id)
            .filter(|id| allowed.is_none_or(|allowed| allowed.contains(id)))
    }

    /// Whether a token verified by `id` would be judged by it again where it was found now.
    fn still_judges(&self, id: ProviderId, location: LocationId, allowed: Option<&[ProviderId]>) -> bool {
        self.provider(id).is_some_and(|p| p.locations.contains(&location))
            && allowed.is_none_or(|allowed| allowed.contains(&id))
    }
}

/// One token of the request and the provider that verified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedToken {
    pub location: LocationId,
    pub provider: ProviderId,
}

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Shared with the token cache.
    pub identity: Rc<Identity>,
    /// Provider that verified the identity's token.
    pub provider: ProviderId,
    /// That token's payload segment (base64url) when the provider has `outputPayloadToHeader`,
    /// else empty.
    pub payload_segment: String,
    /// Every token in the request, all verified; the first is the identity's.
    pub tokens: Vec<VerifiedToken>,
    /// The client certificate (`cnf.x5t#S256`) each bound token of the request is bound to, each
    /// once: every token's, not only the identity's, since every token found may reach the
    /// upstream. The request holds only on a connection presenting all of them (so two different
    /// ones never do).
    pub certificate_bindings: Vec<[u8; 32]>,
    /// The DPoP proof of the request's key-bound token, whose `jti` the replay store must take
    /// before the request holds (`engine::Decision::Proven`). A request has one `DPoP` header, so
    /// at most one proof, and it proves one token (`ath`).
    pub proof: Option<ProofUse>,
}

#[derive(Debug)]
pub enum AuthnOutcome {
    Anonymous,
    Authenticated(Authenticated),
    Rejected(AuthnError),
    /// Keys of this provider are being fetched; evaluate again when they arrive.
    AwaitKeys(ProviderId),
    /// This opaque token must be introspected by this provider; evaluate again with its answer.
    AwaitIntrospection(ProviderId, String),
}

/// Verifies every token found, taking tokens verified before from `cache` while their
/// verification holds (and remembering new ones there). All must pass; the first one is the
/// identity. Only tokens of the `allowed` providers are accepted when given: another configured
/// issuer's token is then an unknown issuer, as in Envoy's jwt_authn when a route requires one
/// provider. Each token's DPoP binding is checked against `proof` (the request's method, URI and
/// `DPoP` header) whether its verification was cached or not.
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
#[allow(clippy::too_many_arguments)] // each is a different input of the pure core
pub fn authenticate(
    issuers: &Issuers,
    found: &[FoundToken],
    keys: &dyn KeyStore,
    verifier: &Verifier,
    cache: &mut TokenCache,
    now_seconds: u64,
    allowed: Option<&[ProviderId]>,
    proof: &ProofRequest<'_>,
    answers: &dyn Answers,
) -> AuthnOutcome {
    let mut result: Option<Authenticated> = None;
    for token in found {
        let lookups = Lookups { keys, answers, verifier };
        let (provider, identity) = match verify_token(issuers, token, &lookups, cache, now_seconds, allowed) {
            Verdict::Verified(provider, identity) => (provider, identity),
            Verdict::AwaitKeys(provider) => return AuthnOutcome::AwaitKeys(provider),
            Verdict::AwaitIntrospection(provider) => {
                return AuthnOutcome::AwaitIntrospection(provider, token.token.clone())
            }
            Verdict::Rejected(error) => return AuthnOutcome::Rejected(error),
        };
        let verified = VerifiedToken { location: token.location, provider };
        let proven = match prove(issuers, token, provider, &identity, proof, verifier, now_seconds) {
            Ok(proven) => proven,
            Err(error) => return AuthnOutcome::Rejected(AuthnError::Dpop(error)),
        };
        // Verification refused a binding that cannot be read; refused here too, should one pass.
        let binding = match binding::certificate_thumbprint(&identity.claims) {
            Ok(binding) => binding,
            Err(error) => return AuthnOutcome::Rejected(AuthnError::Claims(error)),
        };
        match &mut result {
            None => {
                // An opaque token has no payload to pass on: the header is only removed then.
                let wants_payload = issuers.provider(provider).is_some_and(|p| p.output_payload_to_header.is_some())
                    && !introspection::is_opaque(&token.token);
                let payload_segment = match wants_payload {
                    true => token.token.split('.').nth(1).unwrap_or_default().to_string(),
                    false => String::new(),
                };
                let certificate_bindings = binding.into_iter().collect();
                result = Some(Authenticated {
                    identity,
                    provider,
                    payload_segment,
                    tokens: vec![verified],
                    certificate_bindings,
                    proof: proven,
                });
            }
            Some(first) => {
                first.tokens.push(verified);
                first.proof = first.proof.or(proven);
            }
        }
        if let (Some(binding), Some(first)) = (binding, result.as_mut()) {
            if !first.certificate_bindings.contains(&binding) {
                first.certificate_bindings.push(binding);
            }
        }
    }
    match result {
        Some(authenticated) => AuthnOutcome::Authenticated(authenticated),
        None => AuthnOutcome::Anonymous,
    }
}

/// The DPoP binding of one verified token on this request (`dpop::check`).
fn prove(
    issuers: &Issuers,
    token: &FoundToken,
    provider: ProviderId,
    identity: &Identity,
    proof: &ProofRequest<'_>,
    verifier: &Verifier,
    now_seconds: u64,
) -> Result<Option<ProofUse>, DpopError> {
    let mode = issuers.provider(provider).map(|p| p.dpop).unwrap_or_default();
    let dpop_scheme = issuers.location(token.location).is_some_and(TokenLocation::is_dpop_scheme);
    dpop::check(mode, dpop_scheme, &identity.claims, &token.token, proof, verifier, &issuers.limits, now_seconds)
}

/// How one token fared.
enum Verdict {
    Verified(ProviderId, Rc<Identity>),
    Rejected(AuthnError),
    /// Must wait for this provider's keys.
    AwaitKeys(ProviderId),
    /// Must wait for this provider's answer about an opaque token.
    AwaitIntrospection(ProviderId),
}

/// What a token is checked against besides the configuration: keys, introspection answers, and
/// the signature backends.
struct Lookups<'a> {
    keys: &'a dyn KeyStore,
    answers: &'a dyn Answers,
    verifier: &'a Verifier,
}

impl From<AuthnError> for Verdict {
    fn from(error: AuthnError) -> Verdict {
        Verdict::Rejected(error)
    }
}

fn verify_token(
    issuers: &Issuers,
    found: &FoundToken,
    lookups: &Lookups<'_>,
    cache: &mut TokenCache,
    now_seconds: u64,
    allowed: Option<&[ProviderId]>,
) -> Verdict {
    let keys = lookups.keys;
    let holds = |verification: &Verification| {
        cached_verification_holds(issuers, keys, found, verification, now_seconds, allowed)
    };
    if let Some((verification, identity)) = cache.identity(&found.token, holds) {
        if keys_ready(keys, verification.provider) {
            return Verdict::Verified(verification.provider, identity);
        }
    }
    verify_new_token(issuers, found, lookups, cache, now_seconds, allowed)
}

/// A token the identity tier does not hold: parsed, and verified unless the verified tier vouches
/// for it. Out of line (as the other large cold paths, docs/performance.md "Footprint"): V8
/// compiles every function with TurboFan when the module loads, and the memory that costs grows
/// with the largest function, so the hot path above stays small and this stays its own.
#[inline(never)]
fn verify_new_token(
    issuers: &Issuers,
    found: &FoundToken,
    lookups: &Lookups<'_>,
    cache: &mut TokenCache,
    now_seconds: u64,
    allowed: Option<&[ProviderId]>,
) -> Verdict {
    let (keys, verifier) = (lookups.keys, lookups.verifier);
    let holds = |verification: &Verification| {
        cached_verification_holds(issuers, keys, found, verification, now_seconds, allowed)
    };
    let parsed = match jwt::parse_with_limits(&found.token, &issuers.limits) {
        Ok(parsed) => parsed,
        Err(JwtError::BadFormat) if introspection::is_opaque(&found.token) => {
            return introspected(issuers, found, lookups.answers, now_seconds, allowed)
        }
        Err(error) => return AuthnError::Token(error).into(),
    };
    let digest = cache.digest(&found.token);
    if let Some(verification) = cache.verification(&digest, holds) {
        if keys_ready(keys, verification.provider) {
            // Verified before, but its identity is no longer cached: skip the RSA, not the parsing.
            return match identity_of(parsed) {
                Ok(identity) => {
                    cache.insert_identity(&found.token, verification, identity.clone());
                    Verdict::Verified(verification.provider, identity)
                }
                Err(error) => error.into(),
            };
        }
    }
    let Some(issuer) = parsed.issuer() else { return AuthnError::UnknownIssuer.into() };
    let Some(provider_id) = issuers.provider_for(issuer, found.location, allowed) else {
        return AuthnError::UnknownIssuer.into();
    };
    let Some(provider) = issuers.provider(provider_id) else { return AuthnError::UnknownIssuer.into() };
    // The issuer's own allow-list, before its keys are looked at (or fetched for an unknown kid).
    if !provider.algorithms.contains(parsed.alg) {
        return AuthnError::Token(JwtError::AlgorithmNotAllowed).into();
    }
    let key_set = match keys.key_state(provider_id, parsed.kid.as_deref()) {
        KeyState::Ready(key_set) => key_set,
        KeyState::Pending => return Verdict::AwaitKeys(provider_id),
        KeyState::Unavailable => return AuthnError::JwksUnavailable.into(),
    };
    // Read before verifying: a key set replaced after this point must not vouch for this result.
    let keys_version = keys.keys_version(provider_id);
    if let Err(error) =
        verifier.verify(key_set, parsed.kid.as_deref(), parsed.alg, parsed.signing_input.as_bytes(), &parsed.signature)
    {
        return AuthnError::Signature(error).into();
    }
    if let Err(error) = claims::validate(&parsed.claims, &provider.audiences, &provider.claims, now_seconds) {
        return AuthnError::Claims(error).into();
    }
    // Every remembered verification has an end: `exp` plus the skew, or a bounded while for a
    // token without `exp` (`requireExpiration: false`).
    let accepted_until = claims::accepted_until(&parsed.claims, &provider.claims, now_seconds);
    let identity = match identity_of(parsed) {
        Ok(identity) => identity,
        Err(error) => return error.into(),
    };
    if let Some(keys_version) = keys_version {
        let verification = Verification { provider: provider_id, accepted_until, keys_version };
        cache.insert(&found.token, digest, verification, identity.clone());
    }
    Verdict::Verified(provider_id, identity)
}

/// An opaque token (not a JWS): the answer of the entry that introspects tokens where it was
/// found, waited for when none is known yet; refused as malformed where no entry introspects.
fn introspected(
    issuers: &Issuers,
    found: &FoundToken,
    answers: &dyn Answers,
    now_seconds: u64,
    allowed: Option<&[ProviderId]>,
) -> Verdict {
    let Some(provider) = issuers.introspector_for(found.location, allowed) else {
        return AuthnError::Token(JwtError::BadFormat).into();
    };
    match answers.answer(provider, &found.token, now_seconds) {
        Some(Ok(identity)) => Verdict::Verified(provider, identity),
        Some(Err(error)) => error.into(),
        None if answers.may_wait() => Verdict::AwaitIntrospection(provider),
        None => AuthnError::Introspection(IntrospectionError::Failed).into(),
    }
}

/// A cached verification is used only if, now, the token would still be judged by the same
/// provider (it may have been verified where another rule applies, or a token requirement may
/// allow other issuers here), that provider's keys are the ones it was verified with, and the
/// token's time window is open. Nothing else it was checked against can change while the
/// configuration, and with it the cache, stays the same.
fn cached_verification_holds(
    issuers: &Issuers,
    keys: &dyn KeyStore,
    found: &FoundToken,
    verification: &Verification,
    now_seconds: u64,
    allowed: Option<&[ProviderId]>,
) -> bool {
    // Each issuer has one entry, so the provider that verified the token is the one its issuer
    // names: no lookup by issuer on the hot path.
    issuers.still_judges(verification.provider, found.location, allowed)
        && verification.holds(now_seconds, keys.keys_version(verification.provider))
}

/// The key lookup a fresh verification would make, so that cached tokens count as JWKS cache hits
/// too; it always succeeds while `keys_version` is `Some`.
fn keys_ready(keys: &dyn KeyStore, provider: ProviderId) -> bool {
    matches!(keys.key_state(provider, None), KeyState::Ready(_))
}

fn identity_of(parsed: ParsedToken<'_>) -> Result<Rc<Identity>, AuthnError> {
    let issuer = parsed.issuer().ok_or(AuthnError::UnknownIssuer)?.to_string();
    let subject = parsed.claims.custom.get("sub").and_then(Value::as_str).unwrap_or_default().to_string();
    Ok(Rc::new(Identity { issuer, subject, claims: parsed.claims.custom }))
}
