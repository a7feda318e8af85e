//! The per-VM scheduler: evaluates requests, parks those that wait for keys, plans and records
//! JWKS fetches, and says what the host must do about it (`Effect`s). Pure, like the rest of the
//! core: the host hands in requests, fetch results, the shared store and the clock, and performs
//! the effects in order.
//!
//! JWKS fetches are dispatched from the root context (on a tick, a wake-up through the worker's
//! shared queue, or a fetch result), never from a request's context: Envoy cancels a context's
//! callouts when its stream ends, and one client hanging up must not cancel the fetch every other
//! waiting request depends on. A request that needs a fetch parks here and wakes its own root
//! context through the queue (`Effect::Kick`).
//!
//! Every worker VM has its own scheduler and memory; what they share is the host's shared data
//! (the key-set records of `keys::cache`, updated by compare-and-swap) and shared queues (each
//! worker registers one, so the worker that completes a fetch can wake the others whose requests
//! wait for it: `Effect::Wake`).

use crate::authn::answers::{self, AnswerCache};
use crate::authn::binding;
use crate::authn::dpop::DpopMode;
use crate::authn::introspection::{IntrospectionCall, IntrospectionError};
use crate::authn::token_cache::{DigestKey, TokenCache};
use crate::authn::verify::{SignatureBackend, Verifier};
use crate::authn::AuthnError;
use crate::authz::PolicyNote;
use crate::config::Config;
use crate::deny::Denial;
use crate::engine::{self, Decision, Outcome, Request};
use crate::ids::ProviderId;
use crate::keys::alg::AlgorithmSet;
use crate::keys::cache::{
    FetchReason, FetchReport, FetchRequest, FetchResult, JwksCache, Plan, SharedStore, Worker, LEASE_GRACE_MS,
};
use crate::keys::host_crypto::{ForeignFunction, HostCrypto};
use crate::keys::KeySource;
use crate::metrics::{self, Counter, KeyLookups};
use std::collections::HashMap;

/// A request re-parked this many times (each after a finished fetch) gets the keys there are.
const MAX_PARKS: u32 = 3;
/// Introspections one worker has asked and not heard back from, at most: beyond, an opaque
/// token is refused at once (a flood of made-up tokens must not become a flood of calls).
const MAX_INTROSPECTIONS: usize = 64;

/// How loud a log line is; the host maps it to its own levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// Something the host must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Carry out `decision` on the parked request `context_id` and resume it (nothing to do when
    /// its stream has ended meanwhile).
    Settle {
        context_id: u32,
        decision: Decision,
    },
    /// Dispatch this fetch from the root context; then report `dispatched` or `dispatch_failed`.
    Dispatch(FetchRequest),
    /// Put a wake-up on this worker's own shared queue (report `kick_failed` if that fails).
    Kick(u32),
    /// Wake another worker through its shared queue: a fetch its requests wait for finished.
    Wake(u32),
    Log(Level, String),
    /// Add to a counter now (`take_counts` has the batched ones).
    Count(Counter, u64),
    /// Add one to a tagged counter (`metrics::denied`); bounded by the configuration.
    CountNamed(String),
    /// The number of usable keys of a provider changed.
    KeysInUse(ProviderId, u64),
    /// How many algorithms this VM verifies with the host's `verify_signature`, after a check.
    HostCryptoAlgorithms(u64),
    /// Dispatch this introspection from the root context; then report `introspecting` or
    /// `introspection_failed`.
    Introspect(IntrospectionCall),
}

struct Parked {
    provider: ProviderId,
    request: Request,
    /// The provider's finished-fetch count when the request parked: it is settled once that moves.
    seen_completions: u64,
    /// Settled with the keys there are by then, whatever happens (never a hang).
    deadline_ms: u64,
    parks: u32,
    /// Waits for the answer about an opaque token with this key, not for keys.
    answer: Option<[u8; 16]>,
}

/// One worker VM's state, and what it does on each event.
pub struct Scheduler {
    config: Config,
    cache: JwksCache,
    /// Which backend verifies which signature algorithm in this VM.
    verifier: Verifier,
    worker: Worker,
    random: Random,
    /// Tokens verified before, per VM: sharing them across workers would cost a copy out of
    /// shared data on every lookup, more than a hit saves.
    tokens: TokenCache,
    /// Introspection answers (this VM's; the shared ones are read through the store).
    answers: AnswerCache,
    /// Introspections to dispatch from the root context, and those dispatched (callout token).
    calls_due: Vec<IntrospectionCall>,
    introspections: Vec<(u32, IntrospectionCall)>,
    /// Per provider, the second its last introspection failed: for the rest of it, its opaque
    /// tokens are refused without a call (an outage is not asked about by every request).
    introspection_down: Vec<Option<u64>>,
    /// Each provider's `issuer` metric tag, in `ProviderId` order.
    issuer_tags: Vec<String>,
    /// Dispatched fetches: callout token → what was asked.
    /// One per key set at most: a list (a hash map would be 2 KB more code for it).
    fetches: Vec<(u32, FetchRequest)>,
    /// Requests parked until a fetch finishes: context id → why and since when.
    waiting: HashMap<u32, Parked>,
    /// A wake-up is queued for this worker's root context and not yet delivered.
    kick_pending: bool,
    /// Counts of the counters every allowed request moves, not yet handed to the host.
    batched: Vec<(Counter, u64)>,
    /// The keys-in-use value last reported per provider, to report changes and log when keys run out.
    keys_in_use: Vec<Option<u64>>,
    /// Whether the host logs debug lines: the per-request line is only formatted then.
    debug_logging: bool,
    /// This VM has seen a request. Envoy also runs the plugin in a VM on its main thread, which
    /// never does: its empty cache and small heap would overwrite the workers' gauges.
    serves_requests: bool,
    effects: Vec<Effect>,
}

impl Scheduler {
    /// Takes over a configuration for one worker. Creates the shared records that do not exist
    /// yet and loads what other workers fetched; never takes a fetch lease: Envoy also configures a
    /// throwaway copy on its main thread (its configuration canary) and kills it at once, and a
    /// killed VM could not give a lease back.
    ///
    /// `host` is the host's foreign-function interface: with `signatureBackend: auto` its
    /// `verify_signature` is checked for each algorithm before that algorithm's first token (not
    /// here: see `keys::host_crypto`). `secret`
    /// is 16 bytes from the host's random source, the token cache's key (`TokenDigest`); without
    /// it, std's random keys are used.
    #[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
    pub fn new(
        config: Config,
        worker: Worker,
        (random, secret): (Random, Option<[u8; 16]>),
        store: &mut dyn SharedStore,
        host: Box<dyn ForeignFunction>,
        now_ms: u64,
    ) -> Self {
        let (verifier, backend_line) = signature_backend(config.signature_backend, host);
        let mut cache = JwksCache::new(config.key_sources(), config.max_jwks_bytes);
        cache.ensure_shared(store);
        if config.issuers.iter().any(|(_, provider)| provider.dpop != DpopMode::Disabled) {
            config.replay.ensure_buckets(store);
        }
        for provider in cache.remote_providers() {
            cache.sync(store, provider);
        }
        let providers = config.issuers.providers.len();
        let (verified_tokens, identities) = config.token_cache;
        let issuer_tags = metrics::issuer_tags(config.issuers.providers.iter().map(|p| p.issuer.as_str()));
        let mut scheduler = Scheduler {
            config,
            cache,
            verifier,
            worker,
            random,
            tokens: TokenCache::sized(
                secret.map_or_else(DigestKey::from_std, DigestKey::from_bytes),
                verified_tokens,
                identities,
            ),
            answers: AnswerCache::default(),
            calls_due: Vec::new(),
            introspections: Vec::new(),
            introspection_down: vec![None; providers],
            fetches: Vec::new(),
            waiting: HashMap::new(),
            kick_pending: false,
            batched: Vec::new(),
            keys_in_use: vec![None; providers],
            issuer_tags,
            debug_logging: false,
            serves_requests: false,
            effects: Vec::new(),
        };
        scheduler.record_keys_in_use(now_ms);
        scheduler.log(Level::Info, backend_line);
        // No host-crypto gauge here: it is per VM, last writer wins, and a VM that serves no
        // requests (the main thread's) must not reset what the workers found.
        scheduler
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// One line for the log at start: what this configuration holds.
    #[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
    pub fn summary(&self) -> String {
        let config = &self.config;
        let policies = &config.policies;
        format!(
            "configured {} issuer(s), {} DENY, {} ALLOW and {} AUDIT policies ({} dry-run), {} token requirement(s)",
            config.issuers.providers.len(),
            policies.deny.len(),
            policies.allow.len(),
            policies.audit.len(),
            policies.deny.iter().chain(&policies.allow).filter(|p| p.dry_run).count(),
            config.token_requirements.len()
        )
    }

    pub fn set_debug_logging(&mut self, on: bool) {
        self.debug_logging = on;
    }

    /// Whether this VM serves requests (and so has gauges worth reporting).
    pub fn serves_requests(&self) -> bool {
        self.serves_requests
    }

    /// Tokens in the verified-token cache, for its gauge; `None` without `jwtRules` (plugins
    /// sharing a VM share its gauges: one without issuers has no cache to report).
    pub fn token_cache_entries(&self) -> Option<usize> {
        (!self.config.issuers.providers.is_empty()).then(|| self.tokens.len())
    }

    /// The effects collected since the last call.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// The batched counts (allowed requests, JWKS cache hits and misses) since the last call. Every
    /// call out of the VM costs about as much as a request's whole policy evaluation, so these are
    /// handed to Envoy on the tick, not per request.
    pub fn take_counts(&mut self) -> Vec<(Counter, u64)> {
        std::mem::take(&mut self.batched)
    }

    /// A request's headers arrived. `Some(decision)`: carry it out now. `None`: the request is
    /// parked (pause it); a later `Effect::Settle` names it.
    pub fn on_request(
        &mut self,
        store: &dyn SharedStore,
        context_id: u32,
        request: Request,
        now_ms: u64,
    ) -> Option<Decision> {
        // Cache hits and misses are counted on a request's first evaluation only.
        let mut outcome = self.evaluate(&request, true, true, now_ms, Some(store));
        if is_jwks_unavailable(&outcome) {
            // This worker's view may lag a fetch another worker just finished (views are synced
            // on ticks): look at the shared records before refusing.
            for provider in self.cache.remote_providers() {
                self.cache.sync(store, provider);
            }
            outcome = self.evaluate(&request, true, false, now_ms, Some(store));
        }
        match outcome {
            Outcome::Decided(decision) => {
                self.report(&decision);
                Some(decision)
            }
            Outcome::AwaitKeys(provider) => {
                self.count(Counter::RequestsWaitedForKeys, 1);
                self.park(context_id, provider, request, 0, now_ms);
                None
            }
            Outcome::AwaitIntrospection { provider, .. } if !self.may_introspect(provider, now_ms) => {
                // Refused without a call: evaluated as a request that may not wait.
                let outcome = self.evaluate(&request, false, false, now_ms, Some(store));
                let Outcome::Decided(decision) = outcome else { return None };
                self.report(&decision);
                Some(decision)
            }
            Outcome::AwaitIntrospection { provider, token } => {
                self.park_for_answer(context_id, provider, &token, request, 0, now_ms);
                None
            }
        }
    }

    /// Whether an opaque token of `provider` may be asked about now: the entry can make the call,
    /// it did not fail this second, and this worker is not already waiting for too many.
    fn may_introspect(&self, provider: ProviderId, now_ms: u64) -> bool {
        let entry = self.config.issuers.provider(provider);
        let can_call = entry.and_then(|p| p.introspection.as_ref()).is_some_and(|i| i.can_call());
        let down = self.introspection_down.get(provider.index()).copied().flatten() == Some(now_ms / 1000);
        can_call && !down && self.introspections.len() + self.calls_due.len() < MAX_INTROSPECTIONS
    }

    /// A parked request's decision is being carried out (`Effect::Settle`): its log lines and
    /// counters, as for a request decided on arrival.
    pub fn settled(&mut self, decision: &Decision) {
        self.report(decision);
    }

    /// Settles a `Decision::Bound` with the digest of the connection's client certificate (Envoy's
    /// `connection.sha256_peer_certificate_digest`, `None` without one) and reports what it comes
    /// to; any other decision comes back as it is (it was reported already).
    pub fn bind(&mut self, decision: Decision, digest: Option<&[u8]>) -> Decision {
        let Decision::Bound { thumbprint, decision, mismatch } = decision else { return decision };
        let chosen = if binding::presented(&thumbprint, digest) { *decision } else { *mismatch };
        self.report(&chosen);
        chosen
    }

    /// Settles a `Decision::Proven` by recording its proof's `jti` in the replay store shared by
    /// every worker, and reports what it comes to (unless that is a `Decision::Bound`, which
    /// `bind` reports); any other decision comes back as it is.
    pub fn prove(&mut self, store: &mut dyn SharedStore, decision: Decision) -> Decision {
        let Decision::Proven { proof, decision, replayed } = decision else { return decision };
        let chosen = match self.config.replay.record(store, &proof) {
            Ok(()) => *decision,
            Err(error) => {
                let mut replayed = *replayed;
                if let Decision::Deny { denial, .. } = &mut replayed {
                    *denial = Denial::InvalidToken(AuthnError::Dpop(error));
                }
                replayed
            }
        };
        self.report(&chosen);
        chosen
    }

    /// The request's stream ended: it no longer waits.
    pub fn on_done(&mut self, context_id: u32) {
        self.waiting.remove(&context_id);
    }

    /// This worker's wake-up was delivered.
    pub fn on_kick(&mut self) {
        self.kick_pending = false;
    }

    /// The wake-up could not be queued: waiting requests are then seen to on ticks.
    pub fn kick_failed(&mut self) {
        self.kick_pending = false;
    }

    /// Periodic and on-demand work: for each remote key set, take in what other workers did,
    /// settle requests whose fetch finished or whose wait ran out, and start, join or give up on
    /// a fetch.
    pub fn service(&mut self, store: &mut dyn SharedStore, now_ms: u64) {
        let overdue: Vec<u32> =
            self.waiting.iter().filter(|(_, parked)| parked.deadline_ms <= now_ms).map(|(id, _)| *id).collect();
        for context_id in overdue {
            self.settle(context_id, false, now_ms);
        }
        for call in std::mem::take(&mut self.calls_due) {
            self.effects.push(Effect::Introspect(call));
        }
        for provider in self.cache.remote_providers() {
            if let Some(keys) = self.cache.sync(store, provider) {
                let issuer = self.issuer(provider);
                self.log(Level::Debug, format!("JWKS for {issuer}: {keys} key(s) in use, fetched by another worker"));
            }
            self.settle_finished(provider, now_ms);
            let waiting = self.waiting.values().any(|parked| parked.provider == provider && parked.answer.is_none());
            match self.cache.plan(store, provider, self.worker, waiting, now_ms) {
                Plan::Fetch(fetch) => self.dispatch(fetch),
                Plan::Settle => {
                    for context_id in self.parked_on(provider) {
                        self.settle(context_id, false, now_ms);
                    }
                }
                Plan::Wait | Plan::Idle => {}
            }
            self.settle_finished(provider, now_ms);
        }
        self.record_keys_in_use(now_ms);
    }

    /// The host dispatched `fetch` as callout `token`.
    pub fn dispatched(&mut self, token: u32, fetch: FetchRequest) {
        self.fetches.retain(|(known, _)| *known != token);
        self.fetches.push((token, fetch));
    }

    /// The host could not dispatch `fetch` (`why` is its status): a fetch without a response.
    pub fn dispatch_failed(&mut self, store: &mut dyn SharedStore, fetch: FetchRequest, why: &str, now_ms: u64) {
        self.log(
            Level::Error,
            format!(
                "cannot dispatch JWKS fetch to cluster {}: {why} (is the cluster defined?)",
                crate::json::Quoted(&fetch.cluster)
            ),
        );
        self.record_fetch_result(store, &fetch, FetchResult::NoResponse, now_ms);
    }

    /// Whether callout `token` is one of this worker's fetches (the host reads its response only then).
    pub fn expects(&self, token: u32) -> bool {
        self.fetches.iter().any(|(known, _)| *known == token) || self.introspections.iter().any(|(t, _)| *t == token)
    }

    /// The host dispatched `call` as callout `token`.
    pub fn introspecting(&mut self, token: u32, call: IntrospectionCall) {
        self.introspections.push((token, call));
    }

    /// The host could not dispatch `call` (`why` is its status): an introspection without answer.
    pub fn introspection_failed(
        &mut self,
        store: &mut dyn SharedStore,
        call: IntrospectionCall,
        why: &str,
        now_ms: u64,
    ) {
        let issuer = self.issuer(call.provider);
        self.log(Level::Error, format!("introspection for {issuer}: could not dispatch to {} ({why})", call.cluster));
        self.on_answer(store, &call, None, now_ms);
    }

    /// Callout `token` answered.
    pub fn on_fetch_response(&mut self, store: &mut dyn SharedStore, token: u32, result: FetchResult<'_>, now_ms: u64) {
        if let Some(index) = self.fetches.iter().position(|(known, _)| *known == token) {
            let (_, fetch) = self.fetches.swap_remove(index);
            self.record_fetch_result(store, &fetch, result, now_ms);
        } else if let Some(index) = self.introspections.iter().position(|(known, _)| *known == token) {
            let (_, call) = self.introspections.swap_remove(index);
            let answer = match result {
                FetchResult::Response { status, body, .. } => Some((status, body)),
                FetchResult::TooLarge { .. } | FetchResult::NoResponse => None,
            };
            self.on_answer(store, &call, answer, now_ms);
        }
    }

    /// An introspection's answer (`None`: none came): judged, kept in this VM, shared with the
    /// other workers when it is one (an outage is not), and the requests waiting for it settled.
    #[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
    fn on_answer(
        &mut self,
        store: &mut dyn SharedStore,
        call: &IntrospectionCall,
        answer: Option<(u32, &[u8])>,
        now_ms: u64,
    ) {
        let now_seconds = now_ms / 1000;
        let Some(provider) = self.config.issuers.provider(call.provider) else { return };
        let Some(introspection) = &provider.introspection else { return };
        let judgement = introspection.judge(provider, answer, now_seconds);
        let issuer = self.issuer(call.provider);
        match (&judgement.result, answer) {
            (Err(AuthnError::Introspection(IntrospectionError::Failed)), _) => {
                if let Some(down) = self.introspection_down.get_mut(call.provider.index()) {
                    *down = Some(now_seconds);
                }
                let status = answer.map_or("no answer".to_string(), |(status, _)| format!("status {status}"));
                self.log(Level::Warn, format!("introspection for {issuer} failed ({status}): refusing its token"));
            }
            (result, Some(answer)) => {
                if let Err(error) = result {
                    self.log(Level::Debug, format!("introspection for {issuer}: refused ({})", error.code()));
                }
                let times = (call.asked_at_seconds, now_seconds);
                answers::share(store, &call.key, answer, judgement.until_seconds, times);
            }
            (_, None) => {}
        }
        self.answers.remember(call.key, &judgement, now_seconds);
        let waiting: Vec<(u32, bool)> = self
            .waiting
            .iter()
            .filter(|(_, parked)| parked.answer == Some(call.key))
            .map(|(id, parked)| (*id, parked.parks < MAX_PARKS))
            .collect();
        for (context_id, may_wait) in waiting {
            self.settle(context_id, may_wait, now_ms);
        }
    }

    /// `shared`: the store to find other workers' introspection answers in (on arrival only; a
    /// parked request's answer comes to this VM).
    fn evaluate(
        &mut self,
        request: &Request,
        may_wait: bool,
        count_key_lookups: bool,
        now_ms: u64,
        shared: Option<&dyn SharedStore>,
    ) -> Outcome {
        self.serves_requests = true;
        let now_seconds = now_ms / 1000;
        let keys = self.cache.at(now_ms);
        let keys = if may_wait { keys } else { keys.without_waiting() };
        let answers = self.answers.view(&self.config.issuers, shared, may_wait);
        let (config, verifier, tokens) = (&self.config, &self.verifier, &mut self.tokens);
        if !count_key_lookups {
            let outcome = engine::evaluate_with(config, request, &keys, &answers, verifier, tokens, now_seconds);
            self.note_host_checks();
            return outcome;
        }
        let lookups = KeyLookups::new(&keys);
        let outcome = engine::evaluate_with(config, request, &lookups, &answers, verifier, tokens, now_seconds);
        for (counter, amount) in lookups.tally() {
            self.count(counter, amount);
        }
        self.note_host_checks();
        outcome
    }

    /// The host checks the last evaluation made (each algorithm's first token in this VM): a log
    /// line each, and the gauge of algorithms the host verifies.
    fn note_host_checks(&mut self) {
        let findings = self.verifier.take_host_findings();
        if findings.is_empty() {
            return;
        }
        for (alg, failure) in findings {
            let line = match failure {
                None => format!("verify_signature check: {alg} passed; the host verifies it"),
                Some(why) => format!(
                    "verify_signature check: {alg} failed ({}); it is verified inside the VM",
                    crate::json::Quoted(&why)
                ),
            };
            self.log(Level::Info, line);
        }
        self.effects.push(Effect::HostCryptoAlgorithms(self.verifier.host_algorithms().len() as u64));
    }

    /// Parks a request on `provider`'s keys and wakes this worker's root context to see to them.
    fn park(&mut self, context_id: u32, provider: ProviderId, request: Request, parks: u32, now_ms: u64) {
        let deadline_ms = now_ms.saturating_add(self.wait_limit_ms(provider));
        let seen_completions = self.cache.completions(provider);
        self.waiting
            .insert(context_id, Parked { provider, request, seen_completions, deadline_ms, parks, answer: None });
        self.kick();
    }

    /// Parks a request until `provider` answers about the opaque `token`: one call per token in
    /// this VM at a time (the others wait for its answer), dispatched from the root context.
    fn park_for_answer(
        &mut self,
        context_id: u32,
        provider: ProviderId,
        token: &str,
        request: Request,
        parks: u32,
        now_ms: u64,
    ) {
        // `may_introspect` said the call can be made; should it not, the request is refused at
        // once (parked past its deadline: the next service settles it), never left waiting.
        let call = self.config.issuers.provider(provider).and_then(|entry| {
            entry.introspection.as_ref().and_then(|i| i.call(provider, &entry.issuer, token, now_ms / 1000))
        });
        let Some(call) = call else {
            let parked = Parked { provider, request, seen_completions: 0, deadline_ms: now_ms, parks, answer: None };
            self.waiting.insert(context_id, parked);
            self.kick();
            return;
        };
        let introspection_timeout_ms = call.timeout_ms;
        let deadline_ms = now_ms.saturating_add(introspection_timeout_ms).saturating_add(LEASE_GRACE_MS);
        let key = call.key;
        let in_flight =
            self.introspections.iter().any(|(_, c)| c.key == key) || self.calls_due.iter().any(|c| c.key == key);
        if !in_flight {
            self.calls_due.push(call);
        }
        self.waiting.insert(
            context_id,
            Parked { provider, request, seen_completions: 0, deadline_ms, parks, answer: Some(key) },
        );
        self.kick();
    }

    /// Wakes this worker's root context (once until it runs) to see to parked requests.
    fn kick(&mut self) {
        if !self.kick_pending {
            if let Some(token) = self.worker.wake_token {
                self.kick_pending = true;
                self.effects.push(Effect::Kick(token));
            }
        }
    }

    /// How long a request may wait for `provider`'s keys: one fetch timeout (two with discovery)
    /// and the lease grace, after which whoever held the fetch is presumed gone.
    fn wait_limit_ms(&self, provider: ProviderId) -> u64 {
        match self.config.issuers.provider(provider).map(|p| &p.keys) {
            Some(KeySource::Remote(remote)) => {
                let fetches = if remote.discovery { 2 } else { 1 };
                remote.timeout_ms.saturating_mul(fetches).saturating_add(LEASE_GRACE_MS)
            }
            _ => LEASE_GRACE_MS,
        }
    }

    fn parked_on(&self, provider: ProviderId) -> Vec<u32> {
        self.waiting
            .iter()
            .filter(|(_, parked)| parked.provider == provider && parked.answer.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Settles the requests parked on `provider` before its latest finished fetch.
    fn settle_finished(&mut self, provider: ProviderId, now_ms: u64) {
        let completions = self.cache.completions(provider);
        let finished: Vec<(u32, bool)> = self
            .waiting
            .iter()
            .filter(|(_, parked)| {
                parked.provider == provider && parked.answer.is_none() && parked.seen_completions != completions
            })
            .map(|(id, parked)| (*id, parked.parks < MAX_PARKS))
            .collect();
        for (context_id, may_wait) in finished {
            self.settle(context_id, may_wait, now_ms);
        }
    }

    /// Evaluates a parked request again: settles it with the decision, or parks it again.
    fn settle(&mut self, context_id: u32, may_wait: bool, now_ms: u64) {
        let Some(parked) = self.waiting.remove(&context_id) else { return };
        match self.evaluate(&parked.request, may_wait, false, now_ms, None) {
            Outcome::Decided(decision) => self.effects.push(Effect::Settle { context_id, decision }),
            Outcome::AwaitKeys(provider) => self.park(context_id, provider, parked.request, parked.parks + 1, now_ms),
            Outcome::AwaitIntrospection { provider, .. } if !self.may_introspect(provider, now_ms) => {
                if let Outcome::Decided(decision) = self.evaluate(&parked.request, false, false, now_ms, None) {
                    self.effects.push(Effect::Settle { context_id, decision });
                }
            }
            Outcome::AwaitIntrospection { provider, token } => {
                self.park_for_answer(context_id, provider, &token, parked.request, parked.parks + 1, now_ms)
            }
        }
    }

    /// Asks the host to start a fetch this worker holds the lease for.
    fn dispatch(&mut self, fetch: FetchRequest) {
        let issuer = self.issuer(fetch.provider);
        match fetch.reason {
            FetchReason::UnknownKid => {
                self.count(Counter::JwksRefetchUnknownKid, 1);
                self.log(
                    Level::Info,
                    format!("JWKS for {issuer}: a token names a kid the keys lack; refetching {}", fetch.uri),
                );
            }
            reason => self.log(Level::Debug, format!("JWKS for {issuer}: fetching {} ({reason:?})", fetch.uri)),
        }
        self.effects.push(Effect::Dispatch(fetch));
    }

    /// Records a fetch result in the shared record, wakes the workers waiting for it, settles this
    /// worker's waiting requests, and starts the next fetch (the key set, after discovery).
    #[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
    fn record_fetch_result(
        &mut self,
        store: &mut dyn SharedStore,
        fetch: &FetchRequest,
        result: FetchResult<'_>,
        now_ms: u64,
    ) {
        let random = self.random.next_u64();
        let outcome = self.cache.on_fetch_result(store, self.worker, fetch, result, now_ms, random);
        let issuer = self.issuer(fetch.provider);
        match &outcome.report {
            FetchReport::Updated { keys, skipped, refresh_in_ms } => {
                self.count(Counter::JwksFetchSuccess, 1);
                self.effects.push(Effect::CountNamed(metrics::jwks_fetches(self.issuer_tag(fetch.provider), true)));
                self.log(
                    Level::Info,
                    format!(
                        "JWKS for {issuer}: {keys} key(s) in use from {}; refresh in {refresh_in_ms} ms",
                        fetch.uri
                    ),
                );
                for reason in skipped {
                    // Keycloak always publishes an encryption key too: skipping keys is routine, not a warning.
                    self.log(Level::Info, format!("JWKS for {issuer}: skipped {reason}"));
                }
            }
            FetchReport::Discovered { jwks_uri } => {
                self.log(Level::Info, format!("JWKS for {issuer}: discovery names jwks_uri {jwks_uri}"));
            }
            FetchReport::Failed { error, retry_in_ms, kept_previous_keys } => {
                self.count(Counter::JwksFetchFailure, 1);
                self.effects.push(Effect::CountNamed(metrics::jwks_fetches(self.issuer_tag(fetch.provider), false)));
                let keeping = if *kept_previous_keys { "keeping the previous keys" } else { "no keys available" };
                self.log(
                    Level::Warn,
                    format!(
                        "JWKS fetch for {issuer} failed ({}): {error}; {keeping}; retrying in {retry_in_ms} ms",
                        error.code()
                    ),
                );
            }
            FetchReport::Superseded => {
                self.log(Level::Warn, format!("JWKS for {issuer}: fetch outlived its lease; result dropped"));
            }
        }
        self.record_keys_in_use(now_ms);
        // A worker that went away has no queue any more; the host ignores a failed wake-up.
        self.effects.extend(outcome.wake.into_iter().map(Effect::Wake));
        if let Some(next) = outcome.next {
            self.dispatch(next);
        }
        self.settle_finished(fetch.provider, now_ms);
    }

    /// Reports every issuer's usable key count that changed; logs when an issuer's keys run out.
    fn record_keys_in_use(&mut self, now_ms: u64) {
        for index in 0..self.keys_in_use.len() {
            let provider = ProviderId(index);
            let count = self.cache.keys_in_use(provider, now_ms) as u64;
            let last = self.keys_in_use.get(index).copied().flatten();
            if last == Some(count) {
                continue;
            }
            if count == 0 && last.is_some_and(|last| last > 0) {
                let issuer = self.issuer(provider);
                self.log(
                    Level::Warn,
                    format!(
                        "JWKS for {issuer}: no usable keys any more (the last successful fetch is older than \
                         cacheDuration + staleIfError); tokens are refused until a fetch succeeds"
                    ),
                );
            }
            if let Some(slot) = self.keys_in_use.get_mut(index) {
                *slot = Some(count);
            }
            self.effects.push(Effect::KeysInUse(provider, count));
        }
    }

    /// What to log and count for a decision (the host carries out the rest).
    fn report(&mut self, decision: &Decision) {
        match decision {
            Decision::Allow { principal, notes, .. } => {
                self.report_notes(notes, "allowed");
                self.count(Counter::Allowed, 1);
                // Formatting and a host call per allowed request, for a line Envoy drops unless its
                // Wasm log level is debug: only when it is.
                if let (Some(principal), true) = (principal, self.debug_logging) {
                    self.log(Level::Debug, format!("allowed {principal}"));
                }
            }
            Decision::Deny { denial, realm, notes, context } => {
                let status = denial.response(realm).status;
                self.report_notes(notes, &format!("denied {status} resource={realm}"));
                self.log(Level::Info, denial.log_line(status, realm, context));
                self.effects.push(Effect::CountNamed(metrics::denied(status, denial.code(), denial.policy())));
                self.count(Counter::Denied, 1);
            }
            // Reported by `bind` and `prove`, once the host's certificate or shared data says
            // which of their two decisions holds.
            Decision::Bound { .. } | Decision::Proven { .. } => {}
        }
    }

    /// Logs and counts what policies noted besides the decision.
    fn report_notes(&mut self, notes: &[PolicyNote], outcome: &str) {
        for note in notes {
            let (counter, message) = match note {
                PolicyNote::Audited { policy } => {
                    (Counter::Audited, format!("audit: policy={policy} matched; {outcome}"))
                }
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
            self.count(counter, 1);
            self.log(Level::Info, message);
        }
    }

    /// Counters every allowed request moves are batched (`take_counts`); the rest go out at once.
    fn count(&mut self, counter: Counter, amount: u64) {
        if !counter.is_batched() {
            self.effects.push(Effect::Count(counter, amount));
            return;
        }
        match self.batched.iter_mut().find(|(c, _)| *c == counter) {
            Some((_, total)) => *total = total.saturating_add(amount),
            None => self.batched.push((counter, amount)),
        }
    }

    fn log(&mut self, level: Level, message: String) {
        self.effects.push(Effect::Log(level, message));
    }

    fn issuer(&self, provider: ProviderId) -> String {
        self.config.issuers.provider(provider).map(|p| p.issuer.clone()).unwrap_or_default()
    }

    /// Every provider's `issuer` metric tag, in `ProviderId` order (`metrics::issuer_tags`): the
    /// host names its gauges with these, the scheduler its counters.
    pub fn issuer_tags(&self) -> &[String] {
        &self.issuer_tags
    }

    /// The provider's `issuer` metric tag (`metrics::issuer_tags`).
    fn issuer_tag(&self, provider: ProviderId) -> &str {
        self.issuer_tags.get(provider.index()).map_or("-", String::as_str)
    }
}

fn is_jwks_unavailable(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Decided(Decision::Deny { denial: Denial::InvalidToken(AuthnError::JwksUnavailable), .. })
    )
}

/// Random values for jitter and worker ids (SplitMix64). Not for secrets: it only spreads timers
/// apart. The host seeds it (from WASI's random source and the clock).
#[derive(Debug, Clone)]
pub struct Random(u64);

impl Random {
    pub fn seeded(seed: u64) -> Random {
        Random(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A worker id: never 0, so no lease can look like it belongs to an unset owner.
    pub fn worker_id(&mut self) -> u64 {
        self.next_u64() | 1
    }
}

/// The verifier for `backend` and the configure log line that says which backend verifies which
/// algorithm (with `auto`, each host algorithm after its check at first use: `note_host_checks`).
#[inline(never)] // out of line: see verify_new_token (src/authn/mod.rs)
fn signature_backend(backend: SignatureBackend, host: Box<dyn ForeignFunction>) -> (Verifier, String) {
    match backend {
        SignatureBackend::Vm => (
            Verifier::in_vm(),
            "signature verification: every algorithm inside the VM (signatureBackend: vm)".to_string(),
        ),
        SignatureBackend::Auto => {
            let candidates = HostCrypto::candidates();
            let in_vm: AlgorithmSet = AlgorithmSet::all().iter().filter(|alg| !candidates.contains(*alg)).collect();
            let line = format!(
                "signature verification: {candidates} by the host's verify_signature, each once its check at the \
                 first token passes; {in_vm} inside the VM"
            );
            (Verifier::with_host(HostCrypto::new(host)), line)
        }
    }
}

#[cfg(test)]
mod tests;
