//! Per-path token requirements (`tokenRequirements`): which paths need a token, from whom, or none.

use super::Operation;
use crate::ids::ProviderId;

/// A per-path authentication requirement (`tokenRequirements`): the first whose `match` matches
/// the request decides how its tokens are treated; with none, tokens are optional and every token
/// present is validated (Istio's RequestAuthentication).
#[derive(Debug)]
pub struct TokenRequirement {
    pub name: String,
    pub matcher: Operation,
    pub action: RequirementAction,
}

/// `corsPreflight`: what a CORS preflight (`OPTIONS` with a non-empty `Origin` and
/// `Access-Control-Request-Method`, as Envoy's jwt_authn recognises one) needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CorsPreflight {
    /// Istio's default (`bypass_cors_preflight: true` on every jwt_authn it writes): no token is
    /// looked at or required, and the policies decide as for any anonymous request. Browsers
    /// never send credentials on a preflight, so requiring a token would refuse every one.
    #[default]
    Bypass,
    /// A preflight is authenticated like any other request.
    Authenticate,
}

impl CorsPreflight {
    /// Whether a request with `method`, and `has_value` saying which headers it carries with a
    /// non-empty value, is a preflight this setting lets through unauthenticated. (Headers are
    /// only looked at for `OPTIONS`: nothing is spent on the other requests.)
    pub fn bypasses(self, method: &str, has_value: impl Fn(&str) -> bool) -> bool {
        self == CorsPreflight::Bypass
            && method == "OPTIONS"
            && has_value("origin")
            && has_value("access-control-request-method")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequirementAction {
    /// Tokens are neither looked for nor validated: the request is anonymous (health checks).
    SkipValidation,
    /// A valid token from one of these providers is required,
    /// looked for only where they accept tokens; a missing one is 401 whatever the policies say.
    RequireIssuers(Vec<ProviderId>),
}
