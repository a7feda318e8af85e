//! Metrics: the counters the filter keeps, with the names operators see in Envoy's stats.

/// Gauge: bytes of Wasm linear memory of the VM that last reported (every VM runs the same code
/// under the same kind of load; a steadily growing value means a leak). Set on every tick.
pub const WASM_MEMORY_GAUGE: &str = "jwt_authz.wasm_memory_bytes";

/// Every counter, so the host can define them all once at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Allowed,
    Denied400,
    Denied401,
    Denied403,
    JwksFetchSuccess,
    JwksFetchFailure,
    RequestsWaitedForKeys,
}

impl Counter {
    pub const ALL: [Counter; 7] = [
        Counter::Allowed,
        Counter::Denied400,
        Counter::Denied401,
        Counter::Denied403,
        Counter::JwksFetchSuccess,
        Counter::JwksFetchFailure,
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
