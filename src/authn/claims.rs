//! Claim validation: checks a verified token's time window, lifetime, audience and required
//! claims against its issuer's rule (`ClaimRules`, compiled from the `jwtRules` entry).

/// Clock skew allowed when checking `exp` and `nbf` unless `clockSkew` says otherwise, as in
/// Istio and Envoy.
pub const CLOCK_SKEW_SECONDS: u64 = 60;

/// How long a verification without `exp` (`requireExpiration: false`) is remembered before the
/// token is verified again: it has no end of its own, and a cache entry must have one.
pub const NO_EXPIRATION_CACHE_SECONDS: u64 = 300;

use crate::identity::{token_audiences, ClaimPath};
use crate::json::{Map, Value};
use jwt_compact::{Claims, TimeOptions, ValidationError};

/// What one issuer's tokens must satisfy beyond their signature (its `jwtRules` entry), the
/// audience aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRules {
    /// `clockSkew`: seconds `exp` may be past and `nbf` ahead.
    pub clock_skew_seconds: u64,
    /// `requireExpiration`: a token without `exp` is refused (the default: a leaked token must
    /// die; Envoy's jwt_authn accepts one unless told otherwise).
    pub require_expiration: bool,
    /// `maxLifetime`: at most this many seconds from `iat` (or, without `iat`, from now) to `exp`.
    pub max_lifetime_seconds: Option<u64>,
    /// `requiredClaims`: each claim must be one of its values (a string, or an array holding one).
    pub required: Vec<RequiredClaim>,
}

impl Default for ClaimRules {
    fn default() -> Self {
        ClaimRules {
            clock_skew_seconds: CLOCK_SKEW_SECONDS,
            require_expiration: true,
            max_lifetime_seconds: None,
            required: Vec::new(),
        }
    }
}

/// A `requiredClaims` entry: the claim and the values it may have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredClaim {
    pub claim: ClaimPath,
    pub values: Vec<String>,
}

impl RequiredClaim {
    /// A string claim equal to one of the values, or an array with such a string.
    fn holds(&self, claims: &Map) -> bool {
        let accepted = |value: &Value| value.as_str().is_some_and(|text| self.values.iter().any(|v| v == text));
        match self.claim.lookup(claims) {
            Some(Value::Array(items)) => items.iter().any(accepted),
            Some(value) => accepted(value),
            None => false,
        }
    }
}

/// Why the claims of a correctly signed token are not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimsError {
    /// No `exp`. Envoy accepts such tokens forever; we do not (a leaked token must die).
    MissingExpiration,
    /// `exp` is more than the clock skew in the past.
    Expired,
    /// `nbf` is more than the clock skew in the future.
    NotYetValid,
    /// The issuer's rule lists audiences and `aud` names none of them.
    AudienceNotAllowed,
    /// `exp` is further from `iat` (or from now) than `maxLifetime`.
    LifetimeTooLong,
    /// A `requiredClaims` claim is missing or has none of its values.
    RequiredClaimMismatch,
    /// `cnf` is not an object, or its `x5t#S256` or `jkt` is not the base64url of a SHA-256 digest.
    BadConfirmation,
}

impl ClaimsError {
    pub fn code(self) -> &'static str {
        match self {
            ClaimsError::MissingExpiration => "jwt_missing_exp",
            ClaimsError::Expired => "jwt_expired",
            ClaimsError::NotYetValid => "jwt_not_yet_valid",
            ClaimsError::AudienceNotAllowed => "jwt_audience_not_allowed",
            ClaimsError::LifetimeTooLong => "jwt_lifetime_too_long",
            ClaimsError::RequiredClaimMismatch => "jwt_required_claim_mismatch",
            ClaimsError::BadConfirmation => "jwt_cnf_invalid",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ClaimsError::MissingExpiration => "Jwt has no [exp] claim",
            ClaimsError::Expired => "Jwt is expired",
            ClaimsError::NotYetValid => "Jwt not yet valid",
            ClaimsError::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            ClaimsError::LifetimeTooLong => "Jwt lifetime is longer than allowed",
            ClaimsError::RequiredClaimMismatch => "Jwt claims do not have the required values",
            ClaimsError::BadConfirmation => "Jwt [cnf] claim is not valid",
        }
    }
}

/// Checks `exp` and `nbf` against `now_seconds` (with the rule's clock skew), the lifetime, that
/// the token is meant for one of `audiences` (an empty list accepts any audience, as in Istio),
/// and the required claims. Everything checked here is fixed for a given token but the time
/// window, which is all a cached verification re-checks (`accepted_until`).
pub fn validate(
    claims: &Claims<Map>,
    audiences: &[String],
    rules: &ClaimRules,
    now_seconds: u64,
) -> Result<(), ClaimsError> {
    let now =
        i64::try_from(now_seconds).ok().and_then(|secs| chrono::DateTime::from_timestamp(secs, 0)).unwrap_or_default();
    let skew = i64::try_from(rules.clock_skew_seconds).ok().and_then(chrono::Duration::try_seconds).unwrap_or_default();
    let options = TimeOptions::new(skew, move || now);
    match claims.validate_expiration(&options) {
        Ok(_) => {}
        Err(ValidationError::NoClaim(_)) if !rules.require_expiration => {}
        Err(ValidationError::Expired) => return Err(ClaimsError::Expired),
        Err(_) => return Err(ClaimsError::MissingExpiration),
    }
    if claims.not_before.is_some() {
        claims.validate_maturity(&options).map_err(|_| ClaimsError::NotYetValid)?;
    }
    if let Some(max) = rules.max_lifetime_seconds {
        // Compiling refuses maxLifetime without requireExpiration, so `exp` is there.
        let Some(exp) = claims.expiration.map(|exp| exp.timestamp()) else {
            return Err(ClaimsError::MissingExpiration);
        };
        // From `iat`, but never from later than now: an `iat` in the future (or after `exp`) must
        // not stretch what a token may still live.
        let from = claims.issued_at.map_or(now.timestamp(), |iat| iat.timestamp().min(now.timestamp()));
        if exp.saturating_sub(from) > i64::try_from(max).unwrap_or(i64::MAX) {
            return Err(ClaimsError::LifetimeTooLong);
        }
    }
    if !audiences.is_empty() && !token_audiences(&claims.custom).any(|aud| audiences.iter().any(|a| a == aud)) {
        return Err(ClaimsError::AudienceNotAllowed);
    }
    if !rules.required.iter().all(|required| required.holds(&claims.custom)) {
        return Err(ClaimsError::RequiredClaimMismatch);
    }
    // A binding that cannot be read refuses the token here; one that can is checked per request.
    super::binding::certificate_thumbprint(&claims.custom)?;
    super::dpop::confirmation_key(&claims.custom)?;
    Ok(())
}

/// Until when (Unix seconds) a verification of these claims may be reused: `exp` plus the skew, or
/// a bounded while for a token without `exp` (accepted only with `requireExpiration: false`).
pub fn accepted_until(claims: &Claims<Map>, rules: &ClaimRules, now_seconds: u64) -> i64 {
    let skew = i64::try_from(rules.clock_skew_seconds).unwrap_or(i64::MAX);
    match claims.expiration {
        Some(exp) => exp.timestamp().saturating_add(skew),
        None => i64::try_from(now_seconds.saturating_add(NO_EXPIRATION_CACHE_SECONDS)).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Value;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    /// The claims as the token parser builds them: the NumericDates read, whole seconds.
    fn claims(value: serde_json::Value) -> Claims<Map> {
        let Value::Object(mut custom) = Value::from(value) else { panic!("claims are an object") };
        let mut time = |name: &str| match custom.remove(name) {
            Some(Value::Number(seconds)) => Utc.timestamp_opt(seconds.as_f64().expect("number") as i64, 0).single(),
            _ => None,
        };
        let mut claims = Claims::new(Map::new());
        claims.expiration = time("exp");
        claims.not_before = time("nbf");
        claims.issued_at = time("iat");
        claims.custom = custom;
        claims
    }

    fn check(value: serde_json::Value, audiences: &[&str]) -> Result<(), ClaimsError> {
        check_with(value, audiences, &ClaimRules::default())
    }

    fn check_with(value: serde_json::Value, audiences: &[&str], rules: &ClaimRules) -> Result<(), ClaimsError> {
        let audiences: Vec<String> = audiences.iter().map(|s| s.to_string()).collect();
        validate(&claims(value), &audiences, rules, NOW)
    }

    #[test]
    fn time_window_with_sixty_seconds_of_skew() {
        assert_eq!(check(json!({"exp": NOW + 10}), &[]), Ok(()));
        assert_eq!(check(json!({"exp": NOW - 59}), &[]), Ok(()));
        assert_eq!(check(json!({"exp": NOW - 61}), &[]), Err(ClaimsError::Expired));
        assert_eq!(check(json!({"exp": NOW as f64 + 0.5}), &[]), Ok(()));
        assert_eq!(check(json!({}), &[]), Err(ClaimsError::MissingExpiration));
        assert_eq!(check(json!({"exp": NOW + 10, "nbf": NOW + 59}), &[]), Ok(()));
        assert_eq!(check(json!({"exp": NOW + 100, "nbf": NOW + 61}), &[]), Err(ClaimsError::NotYetValid));
    }

    #[test]
    fn audience_string_or_list() {
        let exp = NOW + 100;
        assert_eq!(check(json!({"exp": exp, "aud": "shop"}), &["shop"]), Ok(()));
        assert_eq!(check(json!({"exp": exp, "aud": ["account", "shop"]}), &["shop"]), Ok(()));
        assert_eq!(check(json!({"exp": exp, "aud": ["account"]}), &["shop"]), Err(ClaimsError::AudienceNotAllowed));
        assert_eq!(check(json!({"exp": exp}), &["shop"]), Err(ClaimsError::AudienceNotAllowed));
        assert_eq!(check(json!({"exp": exp, "aud": 5}), &["5"]), Err(ClaimsError::AudienceNotAllowed));
        assert_eq!(check(json!({"exp": exp}), &[]), Ok(()));
    }

    #[test]
    fn the_clock_skew_is_the_rules() {
        let strict = ClaimRules { clock_skew_seconds: 0, ..ClaimRules::default() };
        assert_eq!(check_with(json!({"exp": NOW - 1}), &[], &strict), Err(ClaimsError::Expired));
        assert_eq!(check_with(json!({"exp": NOW}), &[], &strict), Ok(()));
        assert_eq!(check_with(json!({"exp": NOW + 10, "nbf": NOW + 1}), &[], &strict), Err(ClaimsError::NotYetValid));
        let loose = ClaimRules { clock_skew_seconds: 300, ..ClaimRules::default() };
        assert_eq!(check_with(json!({"exp": NOW - 299}), &[], &loose), Ok(()));
        assert_eq!(check_with(json!({"exp": NOW - 301}), &[], &loose), Err(ClaimsError::Expired));
        assert_eq!(accepted_until(&claims(json!({"exp": NOW})), &loose, NOW), NOW as i64 + 300);
    }

    #[test]
    fn expiration_may_be_optional_and_is_then_cached_for_a_bounded_while() {
        let optional = ClaimRules { require_expiration: false, ..ClaimRules::default() };
        assert_eq!(check_with(json!({}), &[], &optional), Ok(()));
        // Optional is not ignored: an `exp` that is there still ends the token.
        assert_eq!(check_with(json!({"exp": NOW - 61}), &[], &optional), Err(ClaimsError::Expired));
        assert_eq!(check_with(json!({"nbf": NOW + 61}), &[], &optional), Err(ClaimsError::NotYetValid));
        let until = accepted_until(&claims(json!({})), &optional, NOW);
        assert_eq!(until, (NOW + NO_EXPIRATION_CACHE_SECONDS) as i64);
    }

    #[test]
    fn max_lifetime_counts_from_iat_or_else_from_now() {
        let hour = ClaimRules { max_lifetime_seconds: Some(3600), ..ClaimRules::default() };
        assert_eq!(check_with(json!({"iat": NOW, "exp": NOW + 3600}), &[], &hour), Ok(()));
        assert_eq!(check_with(json!({"iat": NOW, "exp": NOW + 3601}), &[], &hour), Err(ClaimsError::LifetimeTooLong));
        // Issued long ago with a long life: its lifetime, not what is left of it, counts.
        let old = json!({"iat": NOW - 86_400, "exp": NOW + 60});
        assert_eq!(check_with(old, &[], &hour), Err(ClaimsError::LifetimeTooLong));
        assert_eq!(check_with(json!({"exp": NOW + 3600}), &[], &hour), Ok(()));
        assert_eq!(check_with(json!({"exp": NOW + 3601}), &[], &hour), Err(ClaimsError::LifetimeTooLong));
        assert_eq!(check_with(json!({"iat": NOW}), &[], &hour), Err(ClaimsError::MissingExpiration));
        // An iat in the future, or after exp, counts from now.
        let future = json!({"iat": NOW + 10 * 365 * 86_400 - 3600, "exp": NOW + 10 * 365 * 86_400});
        assert_eq!(check_with(future, &[], &hour), Err(ClaimsError::LifetimeTooLong));
        assert_eq!(
            check_with(json!({"iat": NOW + 9000, "exp": NOW + 7200}), &[], &hour),
            Err(ClaimsError::LifetimeTooLong)
        );
        assert_eq!(check_with(json!({"iat": NOW + 9000, "exp": NOW + 3000}), &[], &hour), Ok(()));
    }

    #[test]
    fn required_claims_need_one_of_their_values() {
        let rules = ClaimRules {
            required: vec![
                RequiredClaim { claim: ClaimPath::dotted("typ"), values: vec!["Bearer".into()] },
                RequiredClaim {
                    claim: ClaimPath::dotted("realm_access.roles"),
                    values: vec!["user".into(), "x".into()],
                },
            ],
            ..ClaimRules::default()
        };
        let exp = NOW + 100;
        let good = json!({"exp": exp, "typ": "Bearer", "realm_access": {"roles": ["offline", "user"]}});
        assert_eq!(check_with(good, &[], &rules), Ok(()));
        for bad in [
            json!({"exp": exp, "typ": "ID", "realm_access": {"roles": ["user"]}}),
            json!({"exp": exp, "typ": "bearer", "realm_access": {"roles": ["user"]}}),
            json!({"exp": exp, "realm_access": {"roles": ["user"]}}),
            json!({"exp": exp, "typ": "Bearer", "realm_access": {"roles": ["admin"]}}),
            json!({"exp": exp, "typ": "Bearer", "realm_access": {"roles": "user,admin"}}),
            json!({"exp": exp, "typ": ["Bearer"], "realm_access": {"roles": [["user"]]}}),
            json!({"exp": exp, "typ": 1, "realm_access": {"roles": ["user"]}}),
        ] {
            assert_eq!(check_with(bad.clone(), &[], &rules), Err(ClaimsError::RequiredClaimMismatch), "{bad}");
        }
    }
}
