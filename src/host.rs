//! Host glue: the only code that talks to Envoy. It gathers inputs, calls the core, and performs
//! what the core asks: local replies, header changes, JWKS fetches, logs and counters.
//!
//! JWKS fetches are dispatched from the root context (in `on_configure` and `on_tick`), never
//! from a request's context: Envoy cancels a context's callouts when its stream ends, and one
//! client hanging up must not cancel the fetch every other waiting request depends on.

use crate::config::Config;
use crate::engine::{self, Decision, HeaderChange, Outcome, Request};
use crate::jwks_cache::{FetchReport, FetchRequest, FetchResult, JwksCache};
use crate::metrics::{Counter, WASM_MEMORY_GAUGE};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the root context checks for due JWKS fetches (first fetch, refresh, retry).
const TICK: Duration = Duration::from_millis(500);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { state: None }) });
}}

/// Per-VM state shared by the root context and every request context.
struct State {
    config: Config,
    cache: JwksCache,
    /// Dispatched fetches: callout token → provider.
    fetches: HashMap<u32, usize>,
    /// Requests parked until a provider's keys arrive: context id → (provider, request).
    waiting: HashMap<u32, (usize, Request)>,
    metrics: Metrics,
}

type SharedState = Rc<RefCell<State>>;

struct Root {
    state: Option<SharedState>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(state) = &self.state else { return };
        let Some(provider) = state.borrow_mut().fetches.remove(&token_id) else { return };
        let status = self.get_http_call_response_header(":status").and_then(|status| status.parse::<u32>().ok());
        // One byte over the limit is enough for the parser to refuse it as too large.
        let max_jwks_bytes = state.borrow().config.limits.max_jwks_bytes;
        let body = self.get_http_call_response_body(0, body_size.min(max_jwks_bytes + 1)).unwrap_or_default();
        let result = match (num_headers, status) {
            (0, _) | (_, None) => FetchResult::NoResponse,
            (_, Some(status)) => FetchResult::Response { status, body: &body },
        };
        record_fetch_result(state, provider, result);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(config) => config,
            Err(err) => {
                log(LogLevel::Critical, &err.to_string());
                return false;
            }
        };
        let cache = JwksCache::new(&config);
        log(
            LogLevel::Info,
            &format!(
                "configured {} issuer(s), {} DENY and {} ALLOW policies",
                config.providers.len(),
                config.policies.deny.len(),
                config.policies.allow.len()
            ),
        );
        let state = Rc::new(RefCell::new(State {
            config,
            cache,
            fetches: HashMap::new(),
            waiting: HashMap::new(),
            metrics: Metrics::define(),
        }));
        self.state = Some(state.clone());
        self.set_tick_period(TICK);
        dispatch_due_fetches(&state);
        true
    }

    fn on_tick(&mut self) {
        if let Some(state) = &self.state {
            dispatch_due_fetches(state);
            state.borrow().metrics.record_memory();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let state = self.state.clone()?;
        Some(Box::new(RequestContext { context_id, state }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP request's context.
struct RequestContext {
    context_id: u32,
    state: SharedState,
}

impl Context for RequestContext {
    fn on_done(&mut self) -> bool {
        self.state.borrow_mut().waiting.remove(&self.context_id);
        true
    }
}

impl HttpContext for RequestContext {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let request = Request::from_header_pairs(self.get_http_request_headers());
        let outcome = {
            let state = self.state.borrow();
            engine::evaluate(&state.config, &request, &state.cache, now_seconds())
        };
        match outcome {
            Outcome::Decided(decision) => perform(&self.state, &decision, false),
            Outcome::AwaitKeys(provider) => {
                let mut state = self.state.borrow_mut();
                state.metrics.increment(Counter::RequestsWaitedForKeys);
                state.waiting.insert(self.context_id, (provider, request));
                Action::Pause
            }
        }
    }
}

/// Starts every fetch the cache says is due, from the root context.
fn dispatch_due_fetches(state: &SharedState) {
    let due = state.borrow_mut().cache.due_fetches(now_millis());
    for fetch in due {
        match dispatch(&fetch) {
            Ok(token) => {
                state.borrow_mut().fetches.insert(token, fetch.provider);
            }
            Err(status) => {
                log(
                    LogLevel::Error,
                    &format!(
                        "cannot dispatch JWKS fetch to cluster {:?}: {status:?} (is the cluster defined?)",
                        fetch.cluster
                    ),
                );
                record_fetch_result(state, fetch.provider, FetchResult::NoResponse);
            }
        }
    }
}

fn dispatch(fetch: &FetchRequest) -> Result<u32, proxy_wasm::types::Status> {
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

/// Updates the cache with a fetch result, then settles every request that waited for it.
fn record_fetch_result(state: &SharedState, provider: usize, result: FetchResult<'_>) {
    let waiters: Vec<(u32, Request)> = {
        let mut guard = state.borrow_mut();
        let state = &mut *guard;
        let report = state.cache.on_fetch_result(provider, result, now_millis());
        let issuer = state.config.providers.get(provider).map(|p| p.issuer.as_str()).unwrap_or_default();
        match report {
            FetchReport::Updated { keys, skipped } => {
                state.metrics.increment(Counter::JwksFetchSuccess);
                log(LogLevel::Info, &format!("JWKS for {issuer}: {keys} key(s) in use"));
                for reason in skipped {
                    // Keycloak always publishes an encryption key too: skipping keys is routine, not a warning.
                    log(LogLevel::Info, &format!("JWKS for {issuer}: skipped {reason}"));
                }
            }
            FetchReport::Failed { reason, retry_in_ms, kept_previous_keys } => {
                state.metrics.increment(Counter::JwksFetchFailure);
                let keeping = if kept_previous_keys { "keeping the previous keys" } else { "no keys available" };
                log(
                    LogLevel::Warn,
                    &format!("JWKS fetch for {issuer} failed: {reason}; {keeping}; retrying in {retry_in_ms} ms"),
                );
            }
        }
        let ids: Vec<u32> = state.waiting.iter().filter(|(_, (p, _))| *p == provider).map(|(id, _)| *id).collect();
        ids.into_iter().filter_map(|id| state.waiting.remove(&id).map(|(_, request)| (id, request))).collect()
    };
    for (context_id, request) in waiters {
        // The stream may have ended while it waited; then there is nothing to settle.
        if hostcalls::set_effective_context(context_id).is_err() {
            continue;
        }
        let outcome = {
            let guard = state.borrow();
            engine::evaluate(&guard.config, &request, &guard.cache, now_seconds())
        };
        match outcome {
            Outcome::Decided(decision) => {
                perform(state, &decision, true);
            }
            Outcome::AwaitKeys(next_provider) => {
                state.borrow_mut().waiting.insert(context_id, (next_provider, request));
            }
        }
    }
}

/// Carries out a decision on the current (effective) request context.
fn perform(state: &SharedState, decision: &Decision, resume: bool) -> Action {
    match decision {
        Decision::Allow { changes, principal } => {
            for change in changes {
                let _ = match change {
                    HeaderChange::Remove(name) => hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None),
                    HeaderChange::Set(name, value) => {
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
                    }
                };
            }
            state.borrow().metrics.increment(Counter::Allowed);
            if let Some(principal) = principal {
                log(LogLevel::Debug, &format!("allowed {principal}"));
            }
            if resume {
                let _ = hostcalls::resume_http_request();
            }
            Action::Continue
        }
        Decision::Deny { denial, realm } => {
            let response = denial.response(realm);
            log(
                LogLevel::Info,
                &format!(
                    "denied {} reason={} policy={} resource={realm}",
                    response.status,
                    denial.code(),
                    denial.policy().unwrap_or("-")
                ),
            );
            state.borrow().metrics.increment(Counter::for_denial_status(response.status));
            let headers: Vec<(&str, &str)> = response.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let _ = hostcalls::send_http_response(response.status, headers, Some(response.body.as_bytes()));
            Action::Pause
        }
    }
}

/// Envoy counter ids, defined once per VM.
struct Metrics {
    ids: Vec<(Counter, u32)>,
    memory_gauge: Option<u32>,
}

impl Metrics {
    fn define() -> Metrics {
        let ids = Counter::ALL
            .iter()
            .filter_map(|&counter| {
                hostcalls::define_metric(MetricType::Counter, counter.name()).ok().map(|id| (counter, id))
            })
            .collect();
        let memory_gauge = hostcalls::define_metric(MetricType::Gauge, WASM_MEMORY_GAUGE).ok();
        Metrics { ids, memory_gauge }
    }

    /// Linear memory in use by this VM (pages of 64 KiB), for soak runs and leak spotting.
    fn record_memory(&self) {
        if let Some(id) = self.memory_gauge {
            let pages = core::arch::wasm32::memory_size(0);
            let bytes = u64::try_from(pages).unwrap_or(u64::MAX).saturating_mul(65_536);
            let _ = hostcalls::record_metric(id, bytes);
        }
    }

    fn increment(&self, counter: Counter) {
        if let Some((_, id)) = self.ids.iter().find(|(c, _)| *c == counter) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

fn now() -> Duration {
    hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH).duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn now_seconds() -> u64 {
    now().as_secs()
}

fn now_millis() -> u64 {
    u64::try_from(now().as_millis()).unwrap_or(u64::MAX)
}
