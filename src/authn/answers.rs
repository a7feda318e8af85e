//! Introspection answers, remembered: in each VM (judged, ready to use) and in the host's shared
//! data (as received, for the other workers), both bounded, each entry only until its judgement's
//! end (`cacheDuration`, never past the token's `exp`).
//!
//! Shared: `BUCKETS` buckets of at most `SLOTS_PER_BUCKET` answers of at most
//! `MAX_SHARED_ANSWER_BYTES` each (8 MiB at most in all, about 2 MiB with Keycloak's 1 KB answers),
//! an answer's bucket picked by its key (`introspection::answer_key`). A full bucket drops the
//! answer nearest its end: a cache may forget, unlike the replay store. A worker that finds an
//! answer there judges it again (the rules are the same everywhere) and keeps it. Failures are
//! never shared: each worker learns of an outage itself, and recovers at its next call.
//!
//! In the VM: at most `LOCAL_CAPACITY` judged answers; when full, the expired go, and if that is
//! not enough, all of them (the next requests ask the shared store again).

use super::introspection::{answer_key, Answers, Judgement};
use super::{AuthnError, Issuers};
use crate::identity::Identity;
use crate::ids::ProviderId;
use crate::keys::cache::SharedStore;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Shared-data buckets of answers.
pub const BUCKETS: usize = 256;
/// Answers per bucket: a bucket is read whole on a miss in the VM.
pub const SLOTS_PER_BUCKET: usize = 8;
/// Larger answers are kept in the VM that got them only.
pub const MAX_SHARED_ANSWER_BYTES: usize = 4096;
/// Judged answers per VM.
pub const LOCAL_CAPACITY: usize = 1024;
const KEY_PREFIX: &str = "jwt-authz/v1/introspection ";
const MAX_ATTEMPTS: usize = 8;
/// Entry header: the key, the end and the second the question was asked (u64 each), the status (u32)
/// and the body's length (u32), little-endian.
const HEADER_BYTES: usize = 16 + 8 + 8 + 4 + 4;

/// A judged answer and the Unix second it ends.
type Known = (u64, Result<Rc<Identity>, AuthnError>);

/// What one VM knows of answers.
#[derive(Debug, Default)]
pub struct AnswerCache {
    local: RefCell<HashMap<[u8; 16], Known>>,
}

impl AnswerCache {
    /// Keeps `judgement` for the token with `key` in this VM.
    pub fn remember(&self, key: [u8; 16], judgement: &Judgement, now_seconds: u64) {
        let mut local = self.local.borrow_mut();
        if local.len() >= LOCAL_CAPACITY {
            local.retain(|_, (until, _)| *until >= now_seconds);
        }
        // Refusals (a flood of made-up tokens) go before answers of real callers; then all.
        if local.len() >= LOCAL_CAPACITY {
            local.retain(|_, (_, result)| result.is_ok());
        }
        if local.len() >= LOCAL_CAPACITY {
            local.clear();
        }
        local.insert(key, (judgement.until_seconds, judgement.result.clone()));
    }

    pub fn len(&self) -> usize {
        self.local.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The request path's view: this VM's answers, then the shared ones through `shared` (when
    /// given), judged with `issuers`.
    pub fn view<'a>(
        &'a self,
        issuers: &'a Issuers,
        shared: Option<&'a dyn SharedStore>,
        may_wait: bool,
    ) -> AnswerView<'a> {
        AnswerView { cache: self, issuers, shared, may_wait }
    }
}

/// `Answers` over one VM's cache and the shared store.
pub struct AnswerView<'a> {
    cache: &'a AnswerCache,
    issuers: &'a Issuers,
    shared: Option<&'a dyn SharedStore>,
    may_wait: bool,
}

impl Answers for AnswerView<'_> {
    fn answer(&self, provider: ProviderId, token: &str, now_seconds: u64) -> Option<Result<Rc<Identity>, AuthnError>> {
        let p = self.issuers.provider(provider)?;
        let introspection = p.introspection.as_ref()?;
        let key = answer_key(&p.issuer, introspection, token);
        if let Some((until, result)) = self.cache.local.borrow().get(&key) {
            if *until >= now_seconds {
                return Some(result.clone());
            }
        }
        let (status, body, received, until) = shared_answer(self.shared?, &key, now_seconds)?;
        let mut judgement = introspection.judge(p, Some((status, &body)), now_seconds);
        // Reused at most `cacheDuration` after it was received, whichever worker received it: a
        // revoked token must not live on in a worker that saw it late.
        let fresh_until = received.saturating_add(introspection.cache_duration_ms / 1000);
        judgement.until_seconds = judgement.until_seconds.min(fresh_until).min(until);
        if judgement.until_seconds < now_seconds {
            return None;
        }
        self.cache.remember(key, &judgement, now_seconds);
        Some(judgement.result)
    }

    fn may_wait(&self) -> bool {
        self.may_wait
    }
}

fn bucket_key(key: &[u8; 16]) -> String {
    let [a, b, c, d, ..] = *key;
    format!("{KEY_PREFIX}{}", u32::from_le_bytes([a, b, c, d]) as usize % BUCKETS)
}

/// One entry of a bucket's value.
struct Entry<'a> {
    key: &'a [u8],
    until: u64,
    received: u64,
    status: u32,
    body: &'a [u8],
    raw: &'a [u8],
}

/// The entries of a bucket's value; a malformed tail is ignored.
fn entries(mut value: &[u8]) -> Vec<Entry<'_>> {
    let mut out = Vec::new();
    while let Some((header, rest)) = value.split_at_checked(HEADER_BYTES) {
        let word = |at: usize| header.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_le_bytes);
        let long = |at: usize| header.get(at..at + 8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes);
        let (Some(until), Some(received), Some(status), Some(length)) = (long(16), long(24), word(32), word(36)) else {
            break;
        };
        let length = length as usize;
        let Some((body, rest)) = rest.split_at_checked(length) else { break };
        let (Some(key), Some(raw)) = (header.get(..16), value.get(..HEADER_BYTES + length)) else { break };
        out.push(Entry { key, until, received, status, body, raw });
        value = rest;
    }
    out
}

/// A shared answer: its status, body, the second it was received, and its end.
fn shared_answer(store: &dyn SharedStore, key: &[u8; 16], now_seconds: u64) -> Option<(u32, Vec<u8>, u64, u64)> {
    let (value, _) = store.get(&bucket_key(key))?;
    let found = entries(&value).into_iter().find(|e| e.key == key && e.until >= now_seconds)?;
    Some((found.status, found.body.to_vec(), found.received, found.until))
}

/// Shares an answer (`status`, `body` as received) to a question asked at `asked_seconds`, held
/// until `until_seconds`. Failures and oversized answers are not shared.
pub fn share(
    store: &mut dyn SharedStore,
    key: &[u8; 16],
    answer: (u32, &[u8]),
    until_seconds: u64,
    (asked_seconds, now_seconds): (u64, u64),
) {
    let (status, body) = answer;
    if body.len() > MAX_SHARED_ANSWER_BYTES {
        return;
    }
    let bucket = bucket_key(key);
    for _ in 0..MAX_ATTEMPTS {
        let (current, cas) = match store.get(&bucket) {
            Some((value, cas)) => (value, Some(cas)),
            None => (Vec::new(), None),
        };
        let all = entries(&current);
        // An answer to a later question stays (this call was slower than another worker's).
        if all.iter().any(|e| e.key == key && e.received > asked_seconds) {
            return;
        }
        let mut kept: Vec<Entry<'_>> = all.into_iter().filter(|e| e.until >= now_seconds && e.key != key).collect();
        if kept.len() >= SLOTS_PER_BUCKET {
            kept.sort_by_key(|e| std::cmp::Reverse(e.until));
            kept.truncate(SLOTS_PER_BUCKET - 1);
        }
        let mut next = Vec::new();
        for entry in &kept {
            next.extend_from_slice(entry.raw);
        }
        next.extend_from_slice(key);
        next.extend_from_slice(&until_seconds.to_le_bytes());
        next.extend_from_slice(&asked_seconds.to_le_bytes());
        next.extend_from_slice(&status.to_le_bytes());
        next.extend_from_slice(&(body.len() as u32).to_le_bytes());
        next.extend_from_slice(body);
        // A lost race only costs another worker's answer its sharing: no correctness at stake.
        if store.set(&bucket, &next, cas).is_ok() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::MemoryStore;

    #[test]
    fn shared_answers_are_found_until_they_end_and_buckets_stay_bounded() {
        let mut store = MemoryStore::default();
        let key = [1u8; 16];
        share(&mut store, &key, (200, b"{\"active\":true}"), 150, (100, 100));
        assert_eq!(shared_answer(&store, &key, 150), Some((200, b"{\"active\":true}".to_vec(), 100, 150)));
        // A later answer of the same token is not replaced by an earlier one arriving late.
        share(&mut store, &[5u8; 16], (200, b"{\"active\":false}"), 300, (120, 121));
        share(&mut store, &[5u8; 16], (200, b"{\"active\":true}"), 300, (110, 122));
        assert_eq!(shared_answer(&store, &[5u8; 16], 130).map(|a| a.1), Some(b"{\"active\":false}".to_vec()));
        assert_eq!(shared_answer(&store, &key, 151), None);
        assert_eq!(shared_answer(&store, &[2u8; 16], 100), None);
        // One bucket (the same first four bytes), many answers: the nearest end goes first.
        for n in 0..20u8 {
            let mut other = [1u8; 16];
            other[15] = n + 10;
            share(&mut store, &other, (200, b"{}"), 200 + u64::from(n), (100, 100));
        }
        let (value, _) = store.get(&bucket_key(&key)).expect("bucket");
        let kept = entries(&value);
        assert_eq!(kept.len(), SLOTS_PER_BUCKET);
        assert!(kept.iter().all(|e| e.until >= 200 + 20 - SLOTS_PER_BUCKET as u64), "the latest ends stay");
        // Oversized answers are not shared; a malformed value reads as empty.
        share(&mut store, &[3u8; 16], (200, &vec![b' '; MAX_SHARED_ANSWER_BYTES + 1]), 200, (100, 100));
        assert_eq!(shared_answer(&store, &[3u8; 16], 100), None);
        store.set(&bucket_key(&[4u8; 16]), &[9u8; 40], None).expect("set");
        assert_eq!(shared_answer(&store, &[4u8; 16], 100), None);
    }
}
