//! Host glue: the only code that talks to Envoy. It gathers inputs, calls the core, and performs
//! what the core asks: local replies, header changes, JWKS fetches, shared data, logs and counters.
//!
//! JWKS fetches are dispatched from the root context (on a tick, a wake-up through the worker's
//! shared queue, or a fetch result), never from a request's context: Envoy cancels a context's
//! callouts when its stream ends, and one client hanging up must not cancel the fetch every other
//! waiting request depends on. A request that needs a fetch parks itself and wakes its own root
//! context through the queue.
//!
//! Every worker VM has its own root context and memory; what they share is the host's shared
//! data (the key-set records of `jwks_cache`, updated by compare-and-swap) and shared queues
//! (each worker registers one, so the worker that completes a fetch can wake the others whose
//! requests wait for it). Envoy also configures a throwaway copy of the plugin on the main thread
//! (its configuration canary) and kills it at once: `on_configure` therefore only creates the
//! shared records and never takes a fetch lease, which a killed VM could not give back.

use crate::authn::token_cache::TokenCache;
use crate::authn::AuthnError;
use crate::authz::PolicyNote;
use crate::config::Config;
use crate::deny::Denial;
use crate::engine::{self, Decision, HeaderChange, Outcome, Request};
use crate::keys::cache::{
    CasMismatch, FetchReason, FetchReport, FetchRequest, FetchResult, JwksCache, Plan, SharedStore, Worker,
    LEASE_GRACE_MS,
};
use crate::keys::KeySource;
use crate::metrics::{self, keys_in_use_gauge_name, Counter, KeyLookups, TOKEN_CACHE_GAUGE, WASM_MEMORY_GAUGE};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often each worker's root context looks at the shared records: refreshes and retries that
/// fell due, key sets fetched by other workers, leases of dead workers, requests waiting too long.
const TICK: Duration = Duration::from_millis(200);
/// A request re-parked this many times (each after a finished fetch) gets the keys there are.
const MAX_PARKS: u32 = 3;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root { context_id, state: None })
    });
}}

/// Per-VM state shared by the root context and every request context.
struct State {
    config: Config,
    cache: JwksCache,
    worker: Worker,
    root_context_id: u32,
    random: Random,
    /// Dispatched fetches: callout token → what was asked.
    fetches: HashMap<u32, FetchRequest>,
    /// Requests parked until a fetch finishes: context id → why and since when.
    waiting: HashMap<u32, Parked>,
    /// A wake-up is queued for this worker's root context and not yet delivered.
    kick_pending: bool,
    metrics: Metrics,
    /// Tokens verified before, per VM: sharing them across workers would cost a copy out of
    /// shared data on every lookup, more than a hit saves.
    tokens: TokenCache,
    /// Whether Envoy logs this plugin's debug lines; refreshed on every tick.
    debug_logging: bool,
    /// This VM has seen a request. Envoy also runs the plugin in a VM on its main thread, which
    /// never does: its empty cache and small heap would overwrite the workers' gauges.
    serves_requests: bool,
}

struct Parked {
    provider: usize,
    request: Request,
    /// The provider's finished-fetch count when the request parked: it is settled once that moves.
    seen_completions: u64,
    /// Settled with the keys there are by then, whatever happens (never a hang).
    deadline_ms: u64,
    parks: u32,
}

type SharedState = Rc<RefCell<State>>;

struct Root {
    context_id: u32,
    state: Option<SharedState>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(state) = &self.state else { return };
        let Some(fetch) = state.borrow_mut().fetches.remove(&token_id) else { return };
        let header = |name: &str| hostcalls::get_map_value(MapType::HttpCallResponseHeaders, name).ok().flatten();
        let status = header(":status").and_then(|status| status.parse::<u32>().ok());
        let cache_control = header("cache-control");
        // `limits.maxJwksBytes`: a larger body is refused without being copied out of the host.
        let max_jwks_bytes = state.borrow().config.max_jwks_bytes;
        let body = if body_size > max_jwks_bytes {
            Vec::new()
        } else {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default()
        };
        let result = match (num_headers, status) {
            (0, _) | (_, None) => FetchResult::NoResponse,
            (_, Some(status)) if body_size > max_jwks_bytes => FetchResult::TooLarge { status, size: body_size },
            (_, Some(status)) => FetchResult::Response { status, cache_control: cache_control.as_deref(), body: &body },
        };
        record_fetch_result(state, &fetch, result);
        restore_root_context(state);
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
        let mut random = Random::seeded();
        // Never 0, so no lease can look like it belongs to an unset owner.
        let id = random.next() | 1;
        let wake_token = match hostcalls::register_shared_queue(&format!("jwt-authz/wake/{id:016x}")) {
            Ok(token) => Some(token),
            Err(status) => {
                log(LogLevel::Warn, &format!("no shared queue ({status:?}): waiting requests are resumed on ticks"));
                None
            }
        };
        let mut cache = JwksCache::new(config.key_sources(), config.max_jwks_bytes);
        cache.ensure_shared(&mut HostStore);
        for provider in cache.remote_providers() {
            cache.sync(&HostStore, provider);
        }
        log(
            LogLevel::Info,
            &format!(
                "configured {} issuer(s), {} DENY, {} ALLOW and {} AUDIT policies ({} dry-run), {} token requirement(s)",
                config.issuers.providers.len(),
                config.policies.deny.len(),
                config.policies.allow.len(),
                config.policies.audit.len(),
                config.policies.deny.iter().chain(&config.policies.allow).filter(|p| p.dry_run).count(),
                config.token_requirements.len()
            ),
        );
        let metrics = Metrics::define(&config);
        let state = State {
            config,
            cache,
            worker: Worker { id, wake_token },
            root_context_id: self.context_id,
            random,
            fetches: HashMap::new(),
            waiting: HashMap::new(),
            kick_pending: false,
            metrics,
            tokens: TokenCache::new(),
            debug_logging: debug_logging(),
            serves_requests: false,
        };
        state.metrics.record_keys_in_use(&state.cache, now_millis());
        self.state = Some(Rc::new(RefCell::new(state)));
        self.set_tick_period(TICK);
        true
    }

    fn on_tick(&mut self) {
        if let Some(state) = &self.state {
            service(state);
            let mut state = state.borrow_mut();
            state.debug_logging = debug_logging();
            state.metrics.flush();
            if state.serves_requests {
                state.metrics.record_memory();
                // Plugins sharing a VM share its gauges: one without jwtRules has no cache to report.
                if !state.config.issuers.providers.is_empty() {
                    state.metrics.record_token_cache(state.tokens.len());
                }
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        // The messages only say "look again": drain them, then look at every key set.
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {}
        if let Some(state) = &self.state {
            state.borrow_mut().kick_pending = false;
            service(state);
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
        let mut request = Request::from_header_pairs(self.get_http_request_headers());
        let reads = self.state.borrow().config.connection_reads;
        if reads.destination_port {
            request.destination_port =
                self.get_property(vec!["destination", "port"]).as_deref().and_then(property_port);
        }
        if reads.source_address {
            request.source_address = self
                .get_property(vec!["source", "address"])
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .filter(|address| !address.is_empty());
        }
        // Cache hits and misses are counted on a request's first evaluation only.
        let mut outcome = evaluate(&self.state, &request, true, true);
        if is_jwks_unavailable(&outcome) {
            // This worker's view may lag a fetch another worker just finished (views are synced
            // on ticks): look at the shared records before refusing.
            {
                let mut state = self.state.borrow_mut();
                for provider in state.cache.remote_providers() {
                    state.cache.sync(&HostStore, provider);
                }
            }
            outcome = evaluate(&self.state, &request, true, false);
        }
        match outcome {
            Outcome::Decided(decision) => perform(&self.state, &decision, false),
            Outcome::AwaitKeys(provider) => {
                self.state.borrow().metrics.increment(Counter::RequestsWaitedForKeys);
                park(&self.state, self.context_id, provider, request, 0);
                Action::Pause
            }
        }
    }
}

fn evaluate(state: &SharedState, request: &Request, may_wait: bool, count_key_lookups: bool) -> Outcome {
    let mut guard = state.borrow_mut();
    let state = &mut *guard;
    state.serves_requests = true;
    let now = now();
    let keys = state.cache.at(u64::try_from(now.as_millis()).unwrap_or(u64::MAX));
    let keys = if may_wait { keys } else { keys.without_waiting() };
    if !count_key_lookups {
        return engine::evaluate_cached(&state.config, request, &keys, &mut state.tokens, now.as_secs());
    }
    let lookups = KeyLookups::new(&keys);
    let outcome = engine::evaluate_cached(&state.config, request, &lookups, &mut state.tokens, now.as_secs());
    for (counter, amount) in lookups.tally() {
        state.metrics.add(counter, amount);
    }
    outcome
}

fn is_jwks_unavailable(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Decided(Decision::Deny { denial: Denial::InvalidToken(AuthnError::JwksUnavailable), .. })
    )
}

/// Parks a request on `provider`'s keys and wakes this worker's root context to see to them.
fn park(state: &SharedState, context_id: u32, provider: usize, request: Request, parks: u32) {
    let mut guard = state.borrow_mut();
    let state = &mut *guard;
    let now = now_millis();
    let deadline_ms = now.saturating_add(wait_limit_ms(&state.config, provider));
    let seen_completions = state.cache.completions(provider);
    state.waiting.insert(context_id, Parked { provider, request, seen_completions, deadline_ms, parks });
    if !state.kick_pending {
        if let Some(token) = state.worker.wake_token {
            state.kick_pending = hostcalls::enqueue_shared_queue(token, Some(b"kick")).is_ok();
        }
    }
}

/// How long a request may wait for `provider`'s keys: one fetch timeout (two with discovery) and
/// the lease grace, after which whoever held the fetch is presumed gone.
fn wait_limit_ms(config: &Config, provider: usize) -> u64 {
    match config.issuers.providers.get(provider).map(|p| &p.keys) {
        Some(KeySource::Remote(remote)) => {
            let fetches = if remote.discovery { 2 } else { 1 };
            remote.timeout_ms.saturating_mul(fetches).saturating_add(LEASE_GRACE_MS)
        }
        _ => LEASE_GRACE_MS,
    }
}

/// The root context's periodic and on-demand work: for each remote key set, take in what other
/// workers did, settle requests whose fetch finished, and start, join or give up on a fetch.
fn service(state: &SharedState) {
    let now = now_millis();
    let overdue: Vec<u32> =
        state.borrow().waiting.iter().filter(|(_, parked)| parked.deadline_ms <= now).map(|(id, _)| *id).collect();
    for context_id in overdue {
        settle(state, context_id, false);
    }
    let providers = state.borrow().cache.remote_providers();
    for provider in providers {
        let loaded = state.borrow_mut().cache.sync(&HostStore, provider);
        if let Some(keys) = loaded {
            let issuer = issuer(&state.borrow().config, provider);
            log(LogLevel::Debug, &format!("JWKS for {issuer}: {keys} key(s) in use, fetched by another worker"));
        }
        settle_finished(state, provider);
        let plan = {
            let mut guard = state.borrow_mut();
            let state = &mut *guard;
            let waiting = state.waiting.values().any(|parked| parked.provider == provider);
            state.cache.plan(&mut HostStore, provider, state.worker, waiting, now)
        };
        match plan {
            Plan::Fetch(fetch) => dispatch(state, fetch),
            Plan::Settle => {
                for context_id in parked_on(state, provider) {
                    settle(state, context_id, false);
                }
            }
            Plan::Wait | Plan::Idle => {}
        }
        settle_finished(state, provider);
        let guard = state.borrow();
        guard.metrics.record_keys_in_use(&guard.cache, now);
    }
    restore_root_context(state);
}

fn parked_on(state: &SharedState, provider: usize) -> Vec<u32> {
    state.borrow().waiting.iter().filter(|(_, parked)| parked.provider == provider).map(|(id, _)| *id).collect()
}

/// Settles the requests parked on `provider` before its latest finished fetch.
fn settle_finished(state: &SharedState, provider: usize) {
    let finished: Vec<(u32, bool)> = {
        let guard = state.borrow();
        let completions = guard.cache.completions(provider);
        guard
            .waiting
            .iter()
            .filter(|(_, parked)| parked.provider == provider && parked.seen_completions != completions)
            .map(|(id, parked)| (*id, parked.parks < MAX_PARKS))
            .collect()
    };
    for (context_id, may_wait) in finished {
        settle(state, context_id, may_wait);
    }
}

/// Evaluates a parked request again and carries out the decision, or parks it again.
fn settle(state: &SharedState, context_id: u32, may_wait: bool) {
    let Some(parked) = state.borrow_mut().waiting.remove(&context_id) else { return };
    // The stream may have ended while it waited; then there is nothing to settle.
    if hostcalls::set_effective_context(context_id).is_err() {
        return;
    }
    match evaluate(state, &parked.request, may_wait, false) {
        Outcome::Decided(decision) => {
            perform(state, &decision, true);
        }
        Outcome::AwaitKeys(provider) => park(state, context_id, provider, parked.request, parked.parks + 1),
    }
}

/// Host calls made after settling requests would otherwise be attributed to the last request.
fn restore_root_context(state: &SharedState) {
    let root = state.borrow().root_context_id;
    let _ = hostcalls::set_effective_context(root);
}

/// Starts a fetch this worker holds the lease for, owned by the root context.
fn dispatch(state: &SharedState, fetch: FetchRequest) {
    restore_root_context(state);
    {
        let guard = state.borrow();
        let issuer = issuer(&guard.config, fetch.provider);
        match fetch.reason {
            FetchReason::UnknownKid => {
                guard.metrics.increment(Counter::JwksRefetchUnknownKid);
                log(
                    LogLevel::Info,
                    &format!("JWKS for {issuer}: a token names a kid the keys lack; refetching {}", fetch.uri),
                );
            }
            reason => log(LogLevel::Debug, &format!("JWKS for {issuer}: fetching {} ({reason:?})", fetch.uri)),
        }
    }
    let call = hostcalls::dispatch_http_call(
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
    );
    match call {
        Ok(token) => {
            state.borrow_mut().fetches.insert(token, fetch);
        }
        Err(status) => {
            log(
                LogLevel::Error,
                &format!(
                    "cannot dispatch JWKS fetch to cluster {:?}: {status:?} (is the cluster defined?)",
                    fetch.cluster
                ),
            );
            record_fetch_result(state, &fetch, FetchResult::NoResponse);
        }
    }
}

/// Records a fetch result in the shared record, wakes the workers waiting for it, settles this
/// worker's waiting requests, and starts the next fetch (the key set, after discovery).
fn record_fetch_result(state: &SharedState, fetch: &FetchRequest, result: FetchResult<'_>) {
    let outcome = {
        let mut guard = state.borrow_mut();
        let state = &mut *guard;
        let random = state.random.next();
        let outcome = state.cache.on_fetch_result(&mut HostStore, state.worker, fetch, result, now_millis(), random);
        let issuer = issuer(&state.config, fetch.provider);
        match &outcome.report {
            FetchReport::Updated { keys, skipped, refresh_in_ms } => {
                state.metrics.increment(Counter::JwksFetchSuccess);
                log(
                    LogLevel::Info,
                    &format!(
                        "JWKS for {issuer}: {keys} key(s) in use from {}; refresh in {refresh_in_ms} ms",
                        fetch.uri
                    ),
                );
                for reason in skipped {
                    // Keycloak always publishes an encryption key too: skipping keys is routine, not a warning.
                    log(LogLevel::Info, &format!("JWKS for {issuer}: skipped {reason}"));
                }
            }
            FetchReport::Discovered { jwks_uri } => {
                log(LogLevel::Info, &format!("JWKS for {issuer}: discovery names jwks_uri {jwks_uri}"));
            }
            FetchReport::Failed { error, retry_in_ms, kept_previous_keys } => {
                state.metrics.increment(Counter::JwksFetchFailure);
                let keeping = if *kept_previous_keys { "keeping the previous keys" } else { "no keys available" };
                log(
                    LogLevel::Warn,
                    &format!(
                        "JWKS fetch for {issuer} failed ({}): {error}; {keeping}; retrying in {retry_in_ms} ms",
                        error.code()
                    ),
                );
            }
            FetchReport::Superseded => {
                log(LogLevel::Warn, &format!("JWKS for {issuer}: fetch outlived its lease; result dropped"));
            }
        }
        state.metrics.record_keys_in_use(&state.cache, now_millis());
        outcome
    };
    for token in &outcome.wake {
        // A worker that went away has no queue any more; nothing to wake there.
        let _ = hostcalls::enqueue_shared_queue(*token, Some(b"jwks"));
    }
    if let Some(next) = outcome.next {
        dispatch(state, next);
    }
    settle_finished(state, fetch.provider);
}

/// Envoy encodes integer properties as 8 little-endian bytes.
fn property_port(bytes: &[u8]) -> Option<u16> {
    let raw: [u8; 8] = bytes.try_into().ok()?;
    u16::try_from(i64::from_le_bytes(raw)).ok()
}

/// Logs and counts what policies noted besides the decision.
fn report(state: &SharedState, notes: &[PolicyNote], outcome: &str) {
    let state = state.borrow();
    for note in notes {
        let (counter, message) = match note {
            PolicyNote::Audited { policy } => (Counter::Audited, format!("audit: policy={policy} matched; {outcome}")),
            PolicyNote::DryRunWouldDeny { policy } => (
                Counter::DryRunWouldDeny,
                format!(
                    "dry-run: would deny (policy={}) what is {outcome}",
                    policy.as_deref().unwrap_or("no ALLOW policy matched")
                ),
            ),
            PolicyNote::DryRunWouldAllow { policy } => {
                (Counter::DryRunWouldAllow, format!("dry-run: would allow (policy={policy}) what is {outcome}"))
            }
        };
        state.metrics.increment(counter);
        log(LogLevel::Info, &message);
    }
}

/// Carries out a decision on the current (effective) request context.
fn perform(state: &SharedState, decision: &Decision, resume: bool) -> Action {
    match decision {
        Decision::Allow { changes, principal, notes } => {
            report(state, notes, "allowed");
            for change in changes {
                let _ = match change {
                    HeaderChange::Remove(name) => hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None),
                    HeaderChange::Set(name, value) => {
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
                    }
                };
            }
            let guard = state.borrow();
            guard.metrics.increment(Counter::Allowed);
            // Formatting and a host call per allowed request, for a line Envoy drops unless its
            // Wasm log level is debug: only when it is.
            if let (Some(principal), true) = (principal, guard.debug_logging) {
                log(LogLevel::Debug, &format!("allowed {principal}"));
            }
            drop(guard);
            if resume {
                let _ = hostcalls::resume_http_request();
            }
            Action::Continue
        }
        Decision::Deny { denial, realm, notes } => {
            let response = denial.response(realm);
            report(state, notes, &format!("denied {} resource={realm}", response.status));
            log(
                LogLevel::Info,
                &format!(
                    "denied {} reason={} policy={} resource={realm}",
                    response.status,
                    denial.code(),
                    denial.policy().unwrap_or("-")
                ),
            );
            let counter = metrics::denied(response.status, denial.code(), denial.policy());
            state.borrow_mut().metrics.increment_named(counter);
            let headers: Vec<(&str, &str)> = response.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let _ = hostcalls::send_http_response(response.status, headers, Some(response.body.as_bytes()));
            Action::Pause
        }
    }
}

fn issuer(config: &Config, provider: usize) -> String {
    config.issuers.providers.get(provider).map(|p| p.issuer.clone()).unwrap_or_default()
}

/// The host's shared data, for the core.
struct HostStore;

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

/// Random values for jitter and worker ids (SplitMix64), seeded from WASI's random source through
/// std's hasher keys and the clock. Not for secrets: it only spreads timers apart.
struct Random(u64);

impl Random {
    fn seeded() -> Random {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(now().as_nanos());
        Random(hasher.finish())
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Envoy metric ids, defined once per VM: the counters, and a keys-in-use gauge per issuer.
struct Metrics {
    ids: Vec<(Counter, u32)>,
    /// Per-request counts not yet handed to Envoy, by `ids` position: see `add`.
    pending: Vec<Cell<u64>>,
    /// Tagged counters (denials by status, reason, policy), defined on first use.
    named: HashMap<String, u32>,
    /// Per provider.
    keys_in_use: Vec<KeysGauge>,
    /// The VM's linear memory size.
    memory_gauge: Option<u32>,
    /// Tokens in the verified-token cache.
    token_cache_gauge: Option<u32>,
}

/// One issuer's keys-in-use gauge.
struct KeysGauge {
    issuer: String,
    id: Option<u32>,
    /// The value last recorded, to log when keys run out.
    last: Cell<Option<u64>>,
}

impl Metrics {
    fn define(config: &Config) -> Metrics {
        let ids = Counter::ALL
            .iter()
            .filter_map(|&counter| {
                hostcalls::define_metric(MetricType::Counter, counter.name()).ok().map(|id| (counter, id))
            })
            .collect();
        let keys_in_use = config
            .providers
            .iter()
            .map(|provider| {
                let id = hostcalls::define_metric(MetricType::Gauge, &keys_in_use_gauge_name(&provider.issuer)).ok();
                KeysGauge { issuer: provider.issuer.clone(), id, last: Cell::new(None) }
            })
            .collect();
        let memory_gauge = hostcalls::define_metric(MetricType::Gauge, WASM_MEMORY_GAUGE).ok();
        let token_cache_gauge = hostcalls::define_metric(MetricType::Gauge, TOKEN_CACHE_GAUGE).ok();
        let pending = vec![Cell::new(0); Counter::ALL.len()];
        Metrics { ids, pending, named: HashMap::new(), keys_in_use, memory_gauge, token_cache_gauge }
    }

    /// Linear memory in use by this VM (pages of 64 KiB), for soak runs and leak spotting.
    fn record_memory(&self) {
        if let Some(id) = self.memory_gauge {
            let pages = core::arch::wasm32::memory_size(0);
            let bytes = u64::try_from(pages).unwrap_or(u64::MAX).saturating_mul(65_536);
            let _ = hostcalls::record_metric(id, bytes);
        }
    }

    fn record_token_cache(&self, entries: usize) {
        if let Some(id) = self.token_cache_gauge {
            let _ = hostcalls::record_metric(id, u64::try_from(entries).unwrap_or(u64::MAX));
        }
    }

    fn increment(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Every call out of the VM costs about as much as a request's whole policy evaluation, so the
    /// counters every allowed request moves are summed here and handed to Envoy on the next tick
    /// (at most 500 ms late, far below any scrape interval); the rest go out at once.
    fn add(&self, counter: Counter, amount: u64) {
        let Some(position) = self.ids.iter().position(|(c, _)| *c == counter) else { return };
        match counter {
            Counter::Allowed | Counter::JwksCacheHit | Counter::JwksCacheMiss => {
                if let Some(pending) = self.pending.get(position) {
                    pending.set(pending.get().saturating_add(amount));
                }
            }
            _ => self.send(position, amount),
        }
    }

    fn flush(&self) {
        for (position, pending) in self.pending.iter().enumerate() {
            let amount = pending.replace(0);
            if amount > 0 {
                self.send(position, amount);
            }
        }
    }

    fn send(&self, position: usize, amount: u64) {
        if let Some((_, id)) = self.ids.get(position) {
            let _ = hostcalls::increment_metric(*id, i64::try_from(amount).unwrap_or(i64::MAX));
        }
    }

    /// Names come from `metrics` (reason codes and configured policy names), so they are bounded.
    fn increment_named(&mut self, name: String) {
        let id = match self.named.get(&name) {
            Some(id) => *id,
            None => match hostcalls::define_metric(MetricType::Counter, &name) {
                Ok(id) => *self.named.entry(name).or_insert(id),
                Err(_) => return,
            },
        };
        let _ = hostcalls::increment_metric(id, 1);
    }

    /// Records every issuer's usable key count; logs when an issuer's keys run out.
    fn record_keys_in_use(&self, cache: &JwksCache, now_ms: u64) {
        for (provider, gauge) in self.keys_in_use.iter().enumerate() {
            let Some(id) = gauge.id else { continue };
            let count = cache.keys_in_use(provider, now_ms) as u64;
            let last = gauge.last.get();
            if last == Some(count) {
                continue;
            }
            if count == 0 && last.is_some_and(|last| last > 0) {
                log(
                    LogLevel::Warn,
                    &format!(
                        "JWKS for {}: no usable keys any more (the last successful fetch is older than \
                         cacheDuration + staleIfError); tokens are refused until a fetch succeeds",
                        gauge.issuer
                    ),
                );
            }
            let _ = hostcalls::record_metric(id, count);
            gauge.last.set(Some(count));
        }
    }
}

fn debug_logging() -> bool {
    matches!(hostcalls::get_log_level(), Ok(LogLevel::Trace | LogLevel::Debug))
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

fn now() -> Duration {
    hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH).duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn now_millis() -> u64 {
    u64::try_from(now().as_millis()).unwrap_or(u64::MAX)
}
