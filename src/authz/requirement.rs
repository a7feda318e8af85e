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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequirementAction {
    /// Tokens are neither looked for nor validated: the request is anonymous (health checks).
    SkipValidation,
    /// A valid token from one of these providers is required,
    /// looked for only where they accept tokens; a missing one is 401 whatever the policies say.
    RequireIssuers(Vec<ProviderId>),
}
