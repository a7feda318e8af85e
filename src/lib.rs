//! jwt-authz: JWT authentication and Istio-style authorization inside Envoy, as a Proxy-Wasm filter.
//!
//! Everything but `host` is the pure core: bytes, headers and `now` in, decisions and descriptions
//! of I/O out. `host` is the only module that talks to the proxy. The layers, bottom to top:
//! `identity`/`ids`/`json`/`base64url` (shared vocabulary), `keys`, `authn` and `authz` (never each other), `config`
//! (compiles into all of them), `engine`/`scheduler`/`deny`/`metrics`, `host`. ARCHITECTURE.md
//! has the rules; tests/architecture.rs keeps them.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

// Shared vocabulary.
pub mod base64url;
pub mod identity;
pub mod ids;
pub mod json;

// Domains.
pub mod authn;
pub mod authz;
pub mod keys;

// Configuration, compiled once into the domains' types.
pub mod config;

// The core's top: one request's decision, the per-VM scheduler, denials, metrics.
pub mod deny;
pub mod engine;
pub mod metrics;
pub mod scheduler;

#[cfg(feature = "conformance")]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
pub mod conformance;
#[cfg(any(test, feature = "test-support"))]
pub mod fakes;
#[cfg(any(test, feature = "test-support"))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
pub mod testkeys;

// The Wycheproof harness (tools/wycheproof-harness) links the library with `conformance` into a
// module of its own, which must not also carry the filter's entry points.
#[cfg(all(target_arch = "wasm32", not(feature = "conformance")))]
mod host;
