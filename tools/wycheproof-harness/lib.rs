//! A Proxy-Wasm module that answers every request with the Wycheproof report of one backend:
//! `/host` for Envoy's `verify_signature` (probed as the filter probes it), `/vm` for the in-VM
//! verifiers as compiled for wasm32.

use jwt_authz::conformance;
use jwt_authz::keys::host_crypto::{ForeignCallError, ForeignFunction, HostCrypto};
use jwt_authz::keys::public_key::SignedBytes;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, Status};

/// The same call the filter's host layer makes.
struct Foreign;

impl ForeignFunction for Foreign {
    fn call(&self, name: &str, arguments: &[u8]) -> Result<Vec<u8>, ForeignCallError> {
        let reply = hostcalls::call_foreign_function(name, Some(arguments));
        reply.map(Option::unwrap_or_default).map_err(|status| match status {
            Status::NotFound => ForeignCallError::NotFound,
            status => ForeignCallError::Failed(format!("{status:?}")),
        })
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Harness) });
}}

struct Harness;

impl Context for Harness {}

impl HttpContext for Harness {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let body = if path == "/host" {
            let (host, probe) = HostCrypto::probe(Box::new(Foreign));
            let report = conformance::run(&|alg, key, message, signature| host.verify(alg, key, message, signature));
            serde_json::json!({
                "host_algorithms": host.algorithms().to_string(),
                "why_not": probe.why_not,
                "report": conformance::to_json(&report),
            })
        } else {
            let report = conformance::run(&|alg, key, message, signature| {
                let sha256 = jwt_authz::keys::alg::HashAlg::Sha256.digest(&[message]);
                Some(key.verify_in_vm(alg, SignedBytes { input: message, sha256: &sha256 }, signature))
            });
            serde_json::json!({"report": conformance::to_json(&report)})
        };
        self.send_http_response(200, vec![("content-type", "application/json")], Some(body.to_string().as_bytes()));
        Action::Pause
    }
}
