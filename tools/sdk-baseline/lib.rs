//! Benchmark baseline: a Proxy-Wasm filter that lets every request through, optionally after reading
//! the request headers (plugin configuration `read-headers`), which any authorization filter must.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Baseline { read_headers: false }) });
}}

struct Baseline {
    read_headers: bool,
}

impl Context for Baseline {}

impl RootContext for Baseline {
    fn on_configure(&mut self, _: usize) -> bool {
        self.read_headers = self.get_plugin_configuration().is_some_and(|config| config == b"read-headers");
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request { read_headers: self.read_headers }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    read_headers: bool,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.read_headers {
            std::hint::black_box(self.get_http_request_headers());
        }
        Action::Continue
    }
}
