//! Host glue: the only code that talks to Envoy (the only importer of `proxy_wasm`). It gathers
//! inputs (headers, connection properties, fetch responses, the clock), hands them to the core's
//! `Scheduler`, and performs the `Effect`s it returns: local replies, header changes, resumed
//! requests, JWKS fetches, shared-queue wake-ups, logs and metrics. It holds no policy of its own.

mod calls;
mod stats;

use crate::config::Config;
use crate::engine::{Decision, HeaderChange, Property, Request};
use crate::keys::cache::{FetchResult, Worker};
use crate::scheduler::{Effect, Random, Scheduler};
use calls::{debug_logging, log, now_millis, HostForeign, HostStore};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use stats::Stats;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// How often each worker's root context looks at the shared records: refreshes and retries that
/// fell due, key sets fetched by other workers, leases of dead workers, requests waiting too long.
const TICK: Duration = Duration::from_millis(200);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root { context_id, vm: None })
    });
}}

/// Per-VM state shared by the root context and every request context.
struct Vm {
    scheduler: Scheduler,
    stats: Stats,
    root_context_id: u32,
}

type SharedVm = Rc<RefCell<Vm>>;

struct Root {
    context_id: u32,
    vm: Option<SharedVm>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(vm) = &self.vm else { return };
        let (expected, max_jwks_bytes) = {
            let vm = vm.borrow();
            (vm.scheduler.expects(token_id), vm.scheduler.config().max_jwks_bytes)
        };
        if !expected {
            return;
        }
        let header = |name: &str| hostcalls::get_map_value(MapType::HttpCallResponseHeaders, name).ok().flatten();
        let status = header(":status").and_then(|status| status.parse::<u32>().ok());
        let cache_control = header("cache-control");
        // `limits.maxJwksBytes`: a larger body is refused without being copied out of the host.
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
        vm.borrow_mut().scheduler.on_fetch_response(&mut HostStore, token_id, result, now_millis());
        perform_effects(vm);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::parse_all_with_env(&bytes, &|name| std::env::var(name).ok()) {
            Ok(config) => config,
            Err(errors) => {
                // Every error, each with its field path: one start is enough to fix them all.
                errors.iter().for_each(|err| log(LogLevel::Critical, &err.to_string()));
                return false;
            }
        };
        let mut random = Random::seeded(calls::seed());
        let id = random.worker_id();
        let no_queue = |status| log(LogLevel::Warn, &format!("no shared queue ({status:?}): requests resume on ticks"));
        let wake_token = hostcalls::register_shared_queue(&format!("jwt-authz/wake/{id:016x}")).map_err(no_queue).ok();
        let (worker, host, secret) = (Worker { id, wake_token }, Box::new(HostForeign), calls::secret());
        let scheduler = Scheduler::new(config, worker, (random, secret), &mut HostStore, host, now_millis());
        let stats = Stats::define(scheduler.issuer_tags());
        log(LogLevel::Info, &scheduler.summary());
        let vm = Rc::new(RefCell::new(Vm { scheduler, stats, root_context_id: self.context_id }));
        perform_effects(&vm);
        self.vm = Some(vm);
        self.set_tick_period(TICK);
        true
    }

    fn on_tick(&mut self) {
        let Some(vm) = &self.vm else { return };
        {
            let mut guard = vm.borrow_mut();
            let vm = &mut *guard;
            vm.scheduler.set_debug_logging(debug_logging());
            vm.scheduler.service(&mut HostStore, now_millis());
            vm.stats.flush(vm.scheduler.take_counts());
            if vm.scheduler.serves_requests() {
                vm.stats.record_memory();
                if let Some(entries) = vm.scheduler.token_cache_entries() {
                    vm.stats.record_token_cache(entries);
                }
            }
        }
        perform_effects(vm);
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        // The messages only say "look again": drain them, then look at every key set.
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {}
        let Some(vm) = &self.vm else { return };
        {
            let mut vm = vm.borrow_mut();
            vm.scheduler.on_kick();
            vm.scheduler.service(&mut HostStore, now_millis());
        }
        perform_effects(vm);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let vm = self.vm.clone()?;
        Some(Box::new(RequestContext { context_id, vm }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP request's context.
struct RequestContext {
    context_id: u32,
    vm: SharedVm,
}

impl Context for RequestContext {
    fn on_done(&mut self) -> bool {
        self.vm.borrow_mut().scheduler.on_done(self.context_id);
        true
    }
}

impl HttpContext for RequestContext {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut request = Request::from_header_pairs(self.get_http_request_headers());
        // Every property read is a call out of the VM and a copy: only those some rule reads.
        let reads = self.vm.borrow().scheduler.config().connection_reads;
        for property in Property::read_by(reads) {
            if let Some(value) = calls::property(property.path()) {
                request.set_property(property, &value);
            }
        }
        let decision = self.vm.borrow_mut().scheduler.on_request(&HostStore, self.context_id, request, now_millis());
        let decision = decision.map(|decision| bind(&self.vm, decision));
        // Log and count before acting, as the core reported them.
        perform_effects(&self.vm);
        match decision {
            Some(decision) => perform(&decision, false),
            None => Action::Pause,
        }
    }
}

/// Performs what the scheduler asked, in order, until it asks for nothing more (a failed
/// dispatch or wake-up is reported back and may produce more).
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn perform_effects(vm: &SharedVm) {
    loop {
        let effects = vm.borrow_mut().scheduler.take_effects();
        if effects.is_empty() {
            break;
        }
        for effect in effects {
            perform_effect(vm, effect);
        }
    }
}

fn perform_effect(vm: &SharedVm, effect: Effect) {
    let root = vm.borrow().root_context_id;
    match effect {
        Effect::Settle { context_id, decision } => {
            // The stream may have ended while it waited; then there is nothing to settle.
            if hostcalls::set_effective_context(context_id).is_ok() {
                // Its log lines and counters first, from its own context, as on arrival (`bind`
                // reports a bound decision, which `settled` leaves to it).
                vm.borrow_mut().scheduler.settled(&decision);
                let decision = bind(vm, decision);
                let report = vm.borrow_mut().scheduler.take_effects();
                report.into_iter().for_each(|effect| perform_effect(vm, effect));
                perform(&decision, true);
            }
            // Host calls made after settling would otherwise be attributed to that request.
            let _ = hostcalls::set_effective_context(root);
        }
        Effect::Dispatch(fetch) => {
            let _ = hostcalls::set_effective_context(root);
            match calls::dispatch(&fetch) {
                Ok(token) => vm.borrow_mut().scheduler.dispatched(token, fetch),
                Err(status) => {
                    let why = format!("{status:?}");
                    vm.borrow_mut().scheduler.dispatch_failed(&mut HostStore, fetch, &why, now_millis());
                }
            }
        }
        Effect::Kick(token) => {
            if hostcalls::enqueue_shared_queue(token, Some(b"kick")).is_err() {
                vm.borrow_mut().scheduler.kick_failed();
            }
        }
        // A worker that went away has no queue any more; nothing to wake there.
        Effect::Wake(token) => {
            let _ = hostcalls::enqueue_shared_queue(token, Some(b"jwks"));
        }
        Effect::Log(level, message) => log(calls::level(level), &message),
        Effect::Count(counter, amount) => vm.borrow().stats.add(counter, amount),
        Effect::CountNamed(name) => vm.borrow_mut().stats.increment_named(name),
        Effect::KeysInUse(provider, count) => vm.borrow().stats.record_keys_in_use(provider, count),
        Effect::HostCryptoAlgorithms(count) => vm.borrow().stats.record_host_crypto(count),
        Effect::Introspect(call) => {
            match hostcalls::set_effective_context(root).and_then(|()| calls::introspect(&call)) {
                Ok(token) => vm.borrow_mut().scheduler.introspecting(token, call),
                Err(why) => vm.borrow_mut().scheduler.introspection_failed(
                    &mut HostStore,
                    call,
                    &format!("{why:?}"),
                    now_millis(),
                ),
            }
        }
    }
}

/// A decision on a DPoP proof, settled by recording its `jti` in shared data, then one on a
/// certificate-bound token, settled with the client certificate's digest (read only for such
/// requests, on the current context); any other decision passes.
fn bind(vm: &SharedVm, decision: Decision) -> Decision {
    let decision = vm.borrow_mut().scheduler.prove(&mut HostStore, decision);
    let Decision::Bound { .. } = decision else { return decision };
    let digest = calls::property(Property::PeerCertificateDigest.path());
    vm.borrow_mut().scheduler.bind(decision, digest.as_deref())
}

/// Carries out a decision on the current (effective) request context.
fn perform(decision: &Decision, resume: bool) -> Action {
    match decision {
        // `bind` settles both first.
        Decision::Bound { mismatch: refusal, .. } | Decision::Proven { replayed: refusal, .. } => {
            perform(refusal, resume)
        }
        Decision::Allow { changes, .. } => {
            for change in changes {
                let _ = match change {
                    HeaderChange::Remove(name) => hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None),
                    HeaderChange::Set(name, value) => {
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
                    }
                };
            }
            if resume {
                let _ = hostcalls::resume_http_request();
            }
            Action::Continue
        }
        Decision::Deny { denial, realm, .. } => {
            let response = denial.response(realm);
            let status = calls::send_local_response(&response);
            if status != 0 {
                // Never resumed: a denial that cannot be sent leaves the request to Envoy's timeout.
                log(LogLevel::Error, &format!("could not send the {} denial (host status {status})", response.status));
            }
            Action::Pause
        }
    }
}
