//! Claim validation: checks a verified token's time window and audience against its issuer's rule.

/// Clock skew allowed when checking `exp` and `nbf`, as in Istio and Envoy.
pub const CLOCK_SKEW_SECONDS: u64 = 60;

use crate::identity::token_audiences;
use crate::json::Map;
use jwt_compact::{Claims, TimeOptions, ValidationError};

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
}

impl ClaimsError {
    pub fn code(self) -> &'static str {
        match self {
            ClaimsError::MissingExpiration => "jwt_missing_exp",
            ClaimsError::Expired => "jwt_expired",
            ClaimsError::NotYetValid => "jwt_not_yet_valid",
            ClaimsError::AudienceNotAllowed => "jwt_audience_not_allowed",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ClaimsError::MissingExpiration => "Jwt has no [exp] claim",
            ClaimsError::Expired => "Jwt is expired",
            ClaimsError::NotYetValid => "Jwt not yet valid",
            ClaimsError::AudienceNotAllowed => "Audiences in Jwt are not allowed",
        }
    }
}

/// Checks `exp` and `nbf` against `now_seconds` (with the clock skew), and that the token is meant
/// for one of `audiences` (an empty list accepts any audience, as in Istio).
pub fn validate(claims: &Claims<Map>, audiences: &[String], now_seconds: u64) -> Result<(), ClaimsError> {
    let now =
        i64::try_from(now_seconds).ok().and_then(|secs| chrono::DateTime::from_timestamp(secs, 0)).unwrap_or_default();
    let skew = chrono::Duration::try_seconds(CLOCK_SKEW_SECONDS as i64).unwrap_or_default();
    let options = TimeOptions::new(skew, move || now);
    claims.validate_expiration(&options).map_err(|err| match err {
        ValidationError::Expired => ClaimsError::Expired,
        _ => ClaimsError::MissingExpiration,
    })?;
    if claims.not_before.is_some() {
        claims.validate_maturity(&options).map_err(|_| ClaimsError::NotYetValid)?;
    }
    if !audiences.is_empty() && !token_audiences(&claims.custom).any(|aud| audiences.iter().any(|a| a == aud)) {
        return Err(ClaimsError::AudienceNotAllowed);
    }
    Ok(())
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
        claims.custom = custom;
        claims
    }

    fn check(value: serde_json::Value, audiences: &[&str]) -> Result<(), ClaimsError> {
        let audiences: Vec<String> = audiences.iter().map(|s| s.to_string()).collect();
        validate(&claims(value), &audiences, NOW)
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
}
