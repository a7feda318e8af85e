//! Thin wrappers over the host calls the glue makes: shared data, foreign functions, the clock,
//! logs, the fetch dispatch and property decoding.

use crate::keys::cache::{CasMismatch, FetchRequest, SharedStore};
use crate::keys::host_crypto::{ForeignCallError, ForeignFunction};
use crate::scheduler::Level;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, Status};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The host's shared data, for the core.
pub(super) struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(bytes), cas)) => Some((bytes, cas.unwrap_or(0))),
            _ => None,
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|_| CasMismatch)
    }
}

/// The host's foreign functions (Envoy's `verify_signature`), for the core.
pub(super) struct HostForeign;

impl ForeignFunction for HostForeign {
    fn call(&self, name: &str, arguments: &[u8]) -> Result<Vec<u8>, ForeignCallError> {
        let reply = hostcalls::call_foreign_function(name, Some(arguments));
        reply.map(Option::unwrap_or_default).map_err(|status| match status {
            Status::NotFound => ForeignCallError::NotFound,
            status => ForeignCallError::Failed(format!("{status:?}")),
        })
    }
}

/// Dispatches a JWKS or discovery fetch from the current (root) context.
pub(super) fn dispatch(fetch: &FetchRequest) -> Result<u32, Status> {
    hostcalls::dispatch_http_call(
        &fetch.cluster,
        vec![
            (":method", "GET"),
            (":path", &fetch.path),
            (":authority", &fetch.authority),
            ("accept", "application/json"),
            ("user-agent", "jwt-authz"),
        ],
        None,
        vec![],
        Duration::from_millis(fetch.timeout_ms),
    )
}

/// A seed for the core's jitter and worker ids: WASI's random source (through std's hasher keys)
/// and the clock.
pub(super) fn seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(now().as_nanos());
    hasher.finish()
}

/// A property of the current stream (`["connection", "mtls"]`): Envoy's serialized value.
pub(super) fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

pub(super) fn level(level: Level) -> LogLevel {
    match level {
        Level::Debug => LogLevel::Debug,
        Level::Info => LogLevel::Info,
        Level::Warn => LogLevel::Warn,
        Level::Error => LogLevel::Error,
    }
}

pub(super) fn debug_logging() -> bool {
    matches!(hostcalls::get_log_level(), Ok(LogLevel::Trace | LogLevel::Debug))
}

pub(super) fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

fn now() -> Duration {
    hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH).duration_since(UNIX_EPOCH).unwrap_or_default()
}

pub(super) fn now_millis() -> u64 {
    u64::try_from(now().as_millis()).unwrap_or(u64::MAX)
}
