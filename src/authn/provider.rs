//! A trusted issuer (a compiled `jwtRules` entry) and its claim-to-header outputs.

use super::claims::ClaimRules;
use super::dpop::DpopMode;
use super::extract::LocationId;
use super::introspection::Introspection;
use crate::identity::ClaimPath;
use crate::keys::alg::AlgorithmSet;
use crate::keys::KeySource;

/// One trusted issuer (a `jwtRules` entry).
#[derive(Debug)]
pub struct Provider {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub keys: KeySource,
    /// `algorithms`: the JWS algorithms its tokens may use.
    pub algorithms: AlgorithmSet,
    /// `clockSkew`, `requireExpiration`, `maxLifetime`, `requiredClaims`.
    pub claims: ClaimRules,
    /// `dpop`: whether key-bound tokens (RFC 9449) are accepted, or required.
    pub dpop: DpopMode,
    /// `introspection`: where opaque tokens are asked about (RFC 7662).
    pub introspection: Option<Introspection>,
    /// Where this issuer's tokens are accepted.
    pub locations: Vec<LocationId>,
    pub forward_original_token: bool,
    pub output_payload_to_header: Option<String>,
    pub output_claim_to_headers: Vec<ClaimToHeader>,
}

/// `outputClaimToHeaders`: a claim copied into a request header for the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: ClaimPath,
}
