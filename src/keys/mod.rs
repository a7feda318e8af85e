//! Keys: JWKS parsing, OIDC discovery, RSA public keys, and the JWKS cache shared by worker VMs.

pub mod alg;
pub mod cache;
mod der;
pub mod discovery;
pub mod ec;
mod ecdsa;
pub mod ed25519;
pub mod host_crypto;
pub mod jwks;
mod montgomery;
pub mod public_key;
pub mod rsa;

mod source;

pub use jwks::KeySet;

use crate::ids::ProviderId;
pub use source::{
    HttpTarget, KeySource, RemoteJwks, DEFAULT_CACHE_DURATION_MS, DEFAULT_FETCH_TIMEOUT_MS, DEFAULT_STALE_IF_ERROR_MS,
    DEFAULT_UNKNOWN_KID_REFETCH_INTERVAL_MS, DISCOVERY_PATH,
};

/// What the key cache can offer for one provider's token right now.
pub enum KeyState<'a> {
    /// Keys to verify with.
    Ready(&'a KeySet),
    /// The request should wait for a fetch: the first one, or a refetch because the token's `kid`
    /// is not among the keys (the provider may have rotated them).
    Pending,
    /// No usable keys, and nothing worth waiting for (the last fetch failed).
    Unavailable,
}

/// Read access to each provider's current keys, for a token naming `kid`. A store answers for one
/// instant (the key cache's `at(now)`). Declared here, beside the cache that implements it, so
/// that authentication depends on keys and never the other way round.
pub trait KeyStore {
    fn key_state(&self, provider: ProviderId, kid: Option<&str>) -> KeyState<'_>;
    /// Changes whenever the provider's key set changes, and is `None` while it has no usable keys:
    /// a cached verification holds only for the keys it was made with.
    fn keys_version(&self, provider: ProviderId) -> Option<u64>;
}
