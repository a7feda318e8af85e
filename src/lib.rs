//! jwt-authz: JWT authentication and Istio-style authorization inside Envoy, as a Proxy-Wasm filter.
//!
//! Everything but `host` is the pure core: bytes, headers and `now` in, decisions and descriptions
//! of I/O out. `host` is the only module that talks to the proxy.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod authn;
pub mod authz;
pub mod config;
pub mod deny;
pub mod engine;
pub mod identity;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod scheduler;

#[cfg(any(test, feature = "test-support"))]
pub mod fakes;
#[cfg(any(test, feature = "test-support"))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
pub mod testkeys;

#[cfg(target_arch = "wasm32")]
mod host;
