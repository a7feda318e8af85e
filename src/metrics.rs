//! Metrics: the counters the filter keeps, with the names operators see in Envoy's stats.

/// Every counter, so the host can define them all once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Allowed,
    Denied400,
    Denied401,
    Denied403,
    JwksFetchSuccess,
    JwksFetchFailure,
    JwksRefetchUnknownKid,
    RequestsWaitedForKeys,
}

impl Counter {
    pub const ALL: [Counter; 8] = [
        Counter::Allowed,
        Counter::Denied400,
        Counter::Denied401,
        Counter::Denied403,
        Counter::JwksFetchSuccess,
        Counter::JwksFetchFailure,
        Counter::JwksRefetchUnknownKid,
        Counter::RequestsWaitedForKeys,
    ];

    /// Stat name; Envoy shows it under `wasmcustom.` (and in Prometheus as `envoy_wasmcustom_…`).
    pub fn name(self) -> &'static str {
        match self {
            Counter::Allowed => "jwt_authz.allowed",
            Counter::Denied400 => "jwt_authz.denied_400",
            Counter::Denied401 => "jwt_authz.denied_401",
            Counter::Denied403 => "jwt_authz.denied_403",
            Counter::JwksFetchSuccess => "jwt_authz.jwks_fetch_success",
            Counter::JwksFetchFailure => "jwt_authz.jwks_fetch_failure",
            Counter::JwksRefetchUnknownKid => "jwt_authz.jwks_refetch_unknown_kid",
            Counter::RequestsWaitedForKeys => "jwt_authz.requests_waited_for_keys",
        }
    }

    /// The counter a denial with this HTTP status increments.
    pub fn for_denial_status(status: u32) -> Counter {
        match status {
            400 => Counter::Denied400,
            403 => Counter::Denied403,
            _ => Counter::Denied401,
        }
    }
}

/// Name of the gauge of keys in use for `issuer`. Stat names are dot-separated and tag-extracted,
/// so every character of the issuer other than a letter or digit becomes `_`.
pub fn keys_in_use_gauge_name(issuer: &str) -> String {
    let issuer: String = issuer.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("jwt_authz.jwks_keys_in_use.{issuer}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_issuers_are_sanitized() {
        let mut names: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
        assert_eq!(
            keys_in_use_gauge_name("http://127.0.0.1:8180/realms/shop"),
            "jwt_authz.jwks_keys_in_use.http___127_0_0_1_8180_realms_shop"
        );
    }
}
