//! Thin wrappers over the host calls the glue makes: shared data, foreign functions, the clock,
//! logs, the fetch dispatch and property decoding.

use crate::authn::introspection::IntrospectionCall;
use crate::deny::DenyResponse;
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
            // An empty value exists (it has a compare-and-swap token): as `None`, the next write
            // would be unconditional and two workers could both win it.
            Ok((None, Some(cas))) => Some((Vec::new(), cas)),
            _ => None,
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|_| CasMismatch)
    }
}

/// The host's foreign functions (Envoy's `verify_signature`), for the core.
pub(super) struct HostForeign;

// Imported here rather than called through the SDK's wrapper: that one panics (aborting the VM:
// 503s, or no filter at all under fail-open) on any status it does not list, and returns the rest
// as an enum a host's "unimplemented" (12) is not a value of.
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_call_foreign_function(
        name: *const u8,
        name_len: usize,
        args: *const u8,
        args_len: usize,
        reply: *mut *mut u8,
        reply_len: *mut usize,
    ) -> u32;
}

// Also our own import: the SDK's `send_http_response` passes no response code details, which
// Envoy's access logs show as `%RESPONSE_CODE_DETAILS%` (empty otherwise for our denials).
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_len: usize,
        body: *const u8,
        body_len: usize,
        headers: *const u8,
        headers_len: usize,
        grpc_status: i32,
    ) -> u32;
}

/// Sends a denial as the local reply, with its details. `grpc_status` -1: Envoy maps the HTTP
/// status for gRPC clients (401 to 16 UNAUTHENTICATED, 403 to 7 PERMISSION_DENIED).
pub(super) fn send_local_response(response: &DenyResponse) -> u32 {
    let headers = serialize_map(&response.headers);
    let (details, body) = (response.details.as_bytes(), response.body.as_bytes());
    // SAFETY: every pointer is to a live slice of the given length, read by the host during the call.
    unsafe {
        proxy_send_local_response(
            response.status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    }
}

/// The ABI's map encoding: the pair count, each key's and value's length (u32 little-endian), then
/// each key and value followed by a NUL.
fn serialize_map(pairs: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend((pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        out.extend((name.len() as u32).to_le_bytes());
        out.extend((value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend(name.as_bytes().iter().chain(b"\0").chain(value.as_bytes()).chain(b"\0"));
    }
    out
}

impl ForeignFunction for HostForeign {
    fn call(&self, name: &str, arguments: &[u8]) -> Result<Vec<u8>, ForeignCallError> {
        let (mut reply, mut reply_len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: the pointers are to live slices and locals; on success the host has allocated
        // `reply` through the SDK's `proxy_on_memory_allocate` (a `Vec<u8>` of capacity
        // `reply_len`, forgotten), whose ownership is taken back once, as the SDK itself does.
        let status = unsafe {
            proxy_call_foreign_function(
                name.as_ptr(),
                name.len(),
                arguments.as_ptr(),
                arguments.len(),
                &mut reply,
                &mut reply_len,
            )
        };
        match status {
            0 if reply.is_null() => Ok(Vec::new()),
            0 => Ok(unsafe { Vec::from_raw_parts(reply, reply_len, reply_len) }),
            1 => Err(ForeignCallError::NotFound),
            other => Err(ForeignCallError::Failed(format!("status {other}"))),
        }
    }
}

/// Dispatches a JWKS or discovery fetch from the current (root) context.
pub(super) fn dispatch(fetch: &FetchRequest) -> Result<u32, Status> {
    let headers = [(":method", "GET"), (":path", &fetch.path), (":authority", &fetch.authority)];
    let headers = headers.into_iter().chain([("accept", "application/json"), ("user-agent", "jwt-authz")]).collect();
    hostcalls::dispatch_http_call(&fetch.cluster, headers, None, vec![], Duration::from_millis(fetch.timeout_ms))
}

/// Dispatches an introspection (a form POST the core described) from the current (root) context.
pub(super) fn introspect(call: &IntrospectionCall) -> Result<u32, Status> {
    let headers = call.headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let timeout = Duration::from_millis(call.timeout_ms);
    hostcalls::dispatch_http_call(&call.cluster, headers, Some(call.body.as_bytes()), vec![], timeout)
}

/// A seed for the core's jitter and worker ids: WASI's random source (through std's hasher keys)
/// and the clock.
pub(super) fn seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(now().as_nanos());
    hasher.finish()
}

/// 16 bytes from the host's random source (WASI `random_get`), if it gives them.
pub(super) fn secret() -> Option<[u8; 16]> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).ok().map(|()| bytes)
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
