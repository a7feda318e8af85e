//! Verified-token cache: remembers which tokens passed verification, so a token seen before skips
//! the RSA operation (and, while it stays hot, JSON parsing too).
//!
//! Verifications are keyed by a 128-bit keyed hash of the whole token text (`TokenDigest`, SipHash-
//! 2-4), the key drawn from the host's random source for each VM. A hit authenticates the
//! request, so two tokens must never share an entry: see `TokenDigest` for why a secret-keyed
//! 128-bit hash is as safe here as the SHA-256 it replaces, at a fraction of the cost. (The full
//! token is not kept: 10,000 Keycloak tokens of 1–4 KB would not fit the per-VM memory budget.) An entry is used only while the token is
//! within its `exp` (plus clock skew), its issuer's keys are still the version it was verified with,
//! and the provider it was verified for is still the one that accepts it where it was found; it is
//! never a reason to skip policy evaluation, which runs on every request.
//!
//! Two bounded LRU tiers:
//! - `verified` (about 80 bytes an entry, many tokens), keyed by that digest: "this token's
//!   signature and claims checked out". A hit skips the RSA operation; the token is parsed again.
//! - `identities` (fewer, larger entries) keeps the token itself and the caller's parsed identity
//!   with all its claims (policies, AUDIT and dry-run rules and output headers may read any of
//!   them, and a cached identity must answer exactly as a fresh one). It is looked up by a cheap fingerprint
//!   and a hit is confirmed by comparing the whole token, so the hottest tokens are neither hashed
//!   nor parsed: a request pays a table lookup and a memory comparison.
//!
//! Time is passed in; nothing here reads a clock.

use crate::identity::Identity;
use crate::ids::ProviderId;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::rc::Rc;

/// Tokens whose verification is remembered by default (`limits.tokenCacheSize`; about 80 bytes of
/// linear memory each, reserved at configure). Sized for a sidecar, which sees its own callers:
/// at 10,000 the two tiers held 3.5 MiB per worker VM (docs/performance.md, "Footprint").
/// Envoy's jwt_authn defaults to 100.
pub const VERIFIED_CAPACITY: usize = 2_000;
/// Tokens whose parsed identity is remembered too by default (`limits.identityCacheSize`; the
/// token plus its parsed claims, about 6 KB for a Keycloak access token): a hit there skips the
/// parsing as well, which is the hot path.
pub const IDENTITY_CAPACITY: usize = 64;
/// Longer tokens are not kept in the identity tier (which stores them and their claims whole): at the
/// largest `limits.identityCacheSize` (1,000) its worst case stays within about 8 MB. They still get
/// the verified tier.
const MAX_IDENTITY_TOKEN_BYTES: usize = 4096;

/// What a verification depends on, the token's text (`header.payload.signature`, as sent), under
/// SipHash-2-4 with 128-bit output and a 128-bit secret key: in the filter, 16 bytes the host layer
/// draws from the host's random source (WASI `random_get`) once per VM.
///
/// Why not SHA-256, as before: a new token paid a SHA-256 pass over its 1–4 KB text only for this
/// key (Envoy's `verify_signature` hashes the signing input itself), several µs inside the VM.
/// Why it is as safe: a forged token is served from the cache only if its digest equals that of a
/// token verified before. SipHash-2-4 is a PRF under a secret key; the key is drawn for this alone
/// (not related to std's hash-map keys), never leaves the VM, and no digest is ever shown to anyone
/// (only verified tokens are inserted, digests are not logged), so collisions cannot be searched
/// offline. Online, each forged request hits with probability at most entries / 2¹²⁸ ≈ 2⁻¹¹⁴, and
/// all 128 bits are compared on every lookup. An unkeyed collision-resistant hash is needed only
/// where the attacker can compute the hash, which here they cannot. Hashing the base64 text
/// rather than the decoded bytes only means that two encodings of one token are two entries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest([u64; 2]);

/// The secret key of `TokenDigest`, one per cache (per VM).
pub struct DigestKey([u8; 16]);

impl DigestKey {
    /// The key from 16 secret random bytes (the host's random source).
    pub fn from_bytes(bytes: [u8; 16]) -> DigestKey {
        DigestKey(bytes)
    }

    /// A key from std's random hash-map keys: for tests and tools, where the host's random source
    /// is not at hand. (The filter's scheduler is given host randomness instead: std's keys are
    /// related to every other `RandomState` in the VM.)
    pub fn from_std() -> DigestKey {
        use std::hash::BuildHasher;
        let state = RandomState::new();
        let [a, b] = [state.hash_one(0u8), state.hash_one(1u8)];
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&a.to_le_bytes());
        bytes[8..].copy_from_slice(&b.to_le_bytes());
        DigestKey(bytes)
    }

    pub fn digest(&self, token: &str) -> TokenDigest {
        use siphasher::sip128::Hasher128 as _;
        let mut hasher = siphasher::sip128::SipHasher24::new_with_key(&self.0);
        hasher.write(token.as_bytes());
        let hash = hasher.finish128();
        TokenDigest([hash.h1, hash.h2])
    }
}

impl Hash for TokenDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The digest is already uniformly distributed; its first half is the table hash. Only
        // verified tokens are ever inserted, so an attacker cannot crowd a bucket.
        state.write_u64(self.0[0]);
    }
}

/// The identity tier's table hash: the token's length and its last 16 bytes, which for a signed
/// token are base64url of the signature's last bytes, as good as random. Collisions only cost a
/// comparison: a hit is confirmed by comparing the whole token.
fn fingerprint(token: &str) -> u64 {
    let bytes = token.as_bytes();
    let tail = bytes.get(bytes.len().saturating_sub(16)..).unwrap_or_default();
    let mut hash = (bytes.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for chunk in tail.chunks(8) {
        let word = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        hash = (hash.rotate_left(29) ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    hash ^ (hash >> 32)
}

/// Byte equality eight bytes at a time: in Wasm, `==` on slices is a byte-by-byte `memcmp` loop,
/// and this comparison is most of an identity-tier hit.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let tails_equal = a_words.remainder() == b_words.remainder();
    let word = |chunk: &[u8]| <[u8; 8]>::try_from(chunk).map(u64::from_ne_bytes).unwrap_or_default();
    tails_equal && a_words.zip(b_words).all(|(x, y)| word(x) == word(y))
}

/// Passes the one `u64` a `TokenDigest` or fingerprint writes straight through.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// What a successful verification established, and for how long it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    /// The provider whose keys and rules the token passed.
    pub provider: ProviderId,
    /// Last second (Unix time) the token is accepted: `exp` plus the clock skew.
    pub accepted_until: i64,
    /// The provider's keys version at verification time (`KeyStore::keys_version`).
    pub keys_version: u64,
}

impl Verification {
    /// True while the token's time window and its provider's keys are unchanged.
    pub fn holds(&self, now_seconds: u64, current_keys_version: Option<u64>) -> bool {
        let now = i64::try_from(now_seconds).unwrap_or(i64::MAX);
        now <= self.accepted_until && current_keys_version == Some(self.keys_version)
    }
}

/// The verified-token cache of one VM.
pub struct TokenCache {
    key: DigestKey,
    verified: Lru<TokenDigest, Verification>,
    identities: Lru<u64, KnownIdentity>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new()
    }
}

struct KnownIdentity {
    token: Box<str>,
    verification: Verification,
    identity: Rc<Identity>,
}

impl TokenCache {
    /// A cache keyed with std's randomness (see `DigestKey::from_std`).
    pub fn new() -> TokenCache {
        TokenCache::with_key(DigestKey::from_std())
    }

    /// A cache keyed with `key` (the filter's: from the host's random source).
    pub fn with_key(key: DigestKey) -> TokenCache {
        TokenCache::sized(key, VERIFIED_CAPACITY, IDENTITY_CAPACITY)
    }

    /// A cache keyed with `key` that remembers `verified` verifications, `identities` of them
    /// with their parsed identity (`limits.tokenCacheSize`, `limits.identityCacheSize`).
    pub fn sized(key: DigestKey, verified: usize, identities: usize) -> TokenCache {
        TokenCache { key, verified: Lru::new(verified), identities: Lru::new(identities.min(verified)) }
    }

    pub fn with_capacity(verified: usize, identities: usize) -> TokenCache {
        TokenCache { key: DigestKey::from_std(), verified: Lru::new(verified), identities: Lru::new(identities) }
    }

    /// The key `token`'s verification is remembered under.
    pub fn digest(&self, token: &str) -> TokenDigest {
        self.key.digest(token)
    }

    /// A cache that remembers nothing: every token is verified.
    pub fn disabled() -> TokenCache {
        TokenCache::with_capacity(0, 0)
    }

    /// The parsed identity of `token` if it was verified before and `still_valid` accepts that
    /// verification.
    pub fn identity(
        &mut self,
        token: &str,
        still_valid: impl FnOnce(&Verification) -> bool,
    ) -> Option<(Verification, Rc<Identity>)> {
        self.identities
            .get(&fingerprint(token))
            .filter(|known| same_bytes(known.token.as_bytes(), token.as_bytes()) && still_valid(&known.verification))
            .map(|known| (known.verification, known.identity.clone()))
    }

    /// The verification of a token verified before (its identity may have to be parsed again).
    pub fn verification(
        &mut self,
        digest: &TokenDigest,
        still_valid: impl FnOnce(&Verification) -> bool,
    ) -> Option<Verification> {
        self.verified.get(digest).copied().filter(still_valid)
    }

    /// Remembers a verified token (`digest` is its `TokenDigest`) and its identity.
    pub fn insert(&mut self, token: &str, digest: TokenDigest, verification: Verification, identity: Rc<Identity>) {
        self.verified.insert(digest, verification);
        self.insert_identity(token, verification, identity);
    }

    /// Remembers the identity of a token whose verification is already cached.
    pub fn insert_identity(&mut self, token: &str, verification: Verification, identity: Rc<Identity>) {
        if token.len() <= MAX_IDENTITY_TOKEN_BYTES {
            let known = KnownIdentity { token: token.into(), verification, identity };
            self.identities.insert(fingerprint(token), known);
        }
    }

    /// Number of tokens whose verification is remembered.
    pub fn len(&self) -> usize {
        self.verified.len()
    }

    pub fn is_empty(&self) -> bool {
        self.verified.len() == 0
    }
}

const NIL: u32 = u32::MAX;

struct Slot<K, V> {
    key: K,
    value: V,
    /// Neighbours in recency order (`NIL` at the ends): `prev` is more recent.
    prev: u32,
    next: u32,
}

/// A bounded map from `K` (a digest or fingerprint: already a good hash) to `V`, evicting the least
/// recently used entry when full. Slots live in one vector linked by index, so an insert into a
/// full cache allocates nothing but the value's own data.
struct Lru<K, V> {
    capacity: usize,
    index: HashMap<K, u32, BuildHasherDefault<DigestHasher>>,
    slots: Vec<Slot<K, V>>,
    /// Most and least recently used slots.
    head: u32,
    tail: u32,
}

impl<K: Hash + Eq + Copy, V> Lru<K, V> {
    fn new(capacity: usize) -> Lru<K, V> {
        // Slot indices are u32 with one value reserved.
        let capacity = capacity.min(NIL as usize - 1);
        // Reserved whole at once: grown by doubling, the vector and the table would leave their
        // outgrown copies behind in linear memory, which never shrinks.
        let index = HashMap::with_capacity_and_hasher(capacity, BuildHasherDefault::default());
        Lru { capacity, index, slots: Vec::with_capacity(capacity), head: NIL, tail: NIL }
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    /// Finds `key` and marks it most recently used.
    fn get(&mut self, key: &K) -> Option<&V> {
        let slot = *self.index.get(key)?;
        self.move_to_front(slot);
        self.slots.get(slot as usize).map(|s| &s.value)
    }

    fn insert(&mut self, key: K, value: V) {
        if self.capacity == 0 {
            return;
        }
        if let Some(&slot) = self.index.get(&key) {
            if let Some(existing) = self.slots.get_mut(slot as usize) {
                existing.value = value;
            }
            self.move_to_front(slot);
            return;
        }
        let slot = if self.slots.len() < self.capacity {
            let slot = self.slots.len() as u32;
            self.slots.push(Slot { key, value, prev: NIL, next: NIL });
            slot
        } else {
            // Reuse the least recently used slot.
            let slot = self.tail;
            self.unlink(slot);
            let Some(evicted) = self.slots.get_mut(slot as usize) else { return };
            self.index.remove(&evicted.key);
            *evicted = Slot { key, value, prev: NIL, next: NIL };
            slot
        };
        self.index.insert(key, slot);
        self.link_front(slot);
    }

    fn move_to_front(&mut self, slot: u32) {
        if self.head != slot {
            self.unlink(slot);
            self.link_front(slot);
        }
    }

    fn unlink(&mut self, slot: u32) {
        let Some(&Slot { prev, next, .. }) = self.slots.get(slot as usize) else { return };
        match self.slots.get_mut(prev as usize) {
            Some(before) => before.next = next,
            None => self.head = next,
        }
        match self.slots.get_mut(next as usize) {
            Some(after) => after.prev = prev,
            None => self.tail = prev,
        }
    }

    fn link_front(&mut self, slot: u32) {
        let old_head = self.head;
        if let Some(entry) = self.slots.get_mut(slot as usize) {
            entry.prev = NIL;
            entry.next = old_head;
        }
        match self.slots.get_mut(old_head as usize) {
            Some(previous_head) => previous_head.prev = slot,
            None => self.tail = slot,
        }
        self.head = slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Map;

    thread_local! {
        static KEY: DigestKey = DigestKey::from_std();
    }

    fn digest(n: u32) -> TokenDigest {
        KEY.with(|key| key.digest(&format!("token-{n}")))
    }

    fn keys(lru: &Lru<TokenDigest, u32>) -> Vec<u32> {
        let mut order = Vec::new();
        let mut at = lru.head;
        while let Some(slot) = lru.slots.get(at as usize) {
            order.push(slot.value);
            at = slot.next;
        }
        // The backward links agree with the forward ones.
        let mut backward = Vec::new();
        let mut at = lru.tail;
        while let Some(slot) = lru.slots.get(at as usize) {
            backward.push(slot.value);
            at = slot.prev;
        }
        backward.reverse();
        assert_eq!(order, backward);
        order
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut lru = Lru::new(3);
        for n in 0..3 {
            lru.insert(digest(n), n);
        }
        assert_eq!(keys(&lru), vec![2, 1, 0]);
        assert_eq!(lru.get(&digest(0)), Some(&0));
        assert_eq!(keys(&lru), vec![0, 2, 1]);
        lru.insert(digest(3), 3);
        assert_eq!(keys(&lru), vec![3, 0, 2]);
        assert_eq!(lru.get(&digest(1)), None, "1 was evicted");
        lru.insert(digest(2), 20);
        assert_eq!(keys(&lru), vec![20, 3, 0]);
        assert_eq!(lru.len(), 3);
        for n in 10..1000 {
            lru.insert(digest(n), n);
            assert!(lru.len() <= 3 && lru.index.len() == lru.len());
        }
        assert_eq!(keys(&lru), vec![999, 998, 997]);
        let mut disabled = Lru::new(0);
        disabled.insert(digest(1), 1u32);
        assert_eq!(disabled.get(&digest(1)), None);
    }

    #[test]
    fn lru_agrees_with_a_naive_model_under_random_use() {
        let mut lru = Lru::new(16);
        let mut model: Vec<(u32, u32)> = Vec::new(); // most recent first
        let mut state = 7u64;
        for step in 0..20_000u32 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let key = ((state >> 33) % 40) as u32;
            if state & 1 == 0 {
                let got = lru.get(&digest(key)).copied();
                let want = model.iter().position(|(k, _)| *k == key).map(|at| model.remove(at));
                if let Some(entry) = want {
                    model.insert(0, entry);
                }
                assert_eq!(got, want.map(|(_, v)| v));
            } else {
                lru.insert(digest(key), step);
                if let Some(at) = model.iter().position(|(k, _)| *k == key) {
                    model.remove(at);
                }
                model.insert(0, (key, step));
                model.truncate(16);
            }
            assert_eq!(keys(&lru), model.iter().map(|(_, v)| *v).collect::<Vec<_>>());
        }
    }

    #[test]
    fn identity_hits_need_the_very_same_token() {
        let mut cache = TokenCache::disabled();
        cache.identities = Lru::new(4);
        cache.verified = Lru::new(4);
        let identity = Rc::new(Identity { issuer: "i".into(), subject: "s".into(), claims: Map::new() });
        let v = Verification { provider: ProviderId(0), accepted_until: 100, keys_version: 1 };
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzIn0.c2lnbmF0dXJlLXRhaWwtb2YtdG9rZW4";
        cache.insert(token, cache.digest(token), v, identity.clone());
        assert!(cache.identity(token, |_| true).is_some());
        assert!(cache.identity(token, |v| v.holds(101, Some(1))).is_none(), "expired");
        // Same length and tail (same fingerprint), different content: not a hit.
        let forged = token.replacen("eyJzdWIiOiJzIn0", "eyJzdWIiOiJ4In0", 1);
        assert_eq!(fingerprint(&forged), fingerprint(token));
        assert!(cache.identity(&forged, |_| true).is_none());
        assert!(cache.verification(&cache.digest(&forged), |_| true).is_none());
        assert_eq!(cache.verification(&cache.digest(token), |_| true), Some(v));
        // Tokens too long for the identity tier still get the verified tier.
        let long = format!("{}.{}.sig", "h", "p".repeat(MAX_IDENTITY_TOKEN_BYTES));
        cache.insert(&long, cache.digest(&long), v, identity);
        assert!(cache.identity(&long, |_| true).is_none());
        assert!(cache.verification(&cache.digest(&long), |_| true).is_some());
    }

    #[test]
    fn same_bytes_is_equality() {
        let samples: [&[u8]; 6] = [b"", b"a", b"abcdefgh", b"abcdefghi", b"abcdefgx", b"abcdefghij"];
        for a in samples {
            for b in samples {
                assert_eq!(same_bytes(a, b), a == b, "{a:?} {b:?}");
            }
        }
        let long: Vec<u8> = (0..1000).map(|i| i as u8).collect();
        for at in [0, 7, 8, 500, 999] {
            let mut other = long.clone();
            other[at] ^= 0x40;
            assert!(!same_bytes(&long, &other));
        }
        assert!(same_bytes(&long, &long.clone()));
    }

    #[test]
    fn digests_tell_tokens_apart_and_depend_on_the_key() {
        let key = DigestKey::from_bytes(*b"0123456789abcdef");
        assert!(key.digest("a.b.c") == key.digest("a.b.c"));
        assert!(key.digest("a.b.c") != key.digest("a.b.d"));
        assert!(key.digest("a.b.c") != key.digest("a.b.c "));
        let other = DigestKey::from_bytes(*b"0123456789abcdeF");
        assert!(other.digest("a.b.c") != key.digest("a.b.c"));
        assert!(DigestKey::from_std().digest("a.b.c") != DigestKey::from_std().digest("a.b.c"));
        // SipHash-2-4-128 itself (the reference implementation's first test vector: key 00..0f,
        // empty message).
        let reference = DigestKey::from_bytes(core::array::from_fn(|i| i as u8));
        let TokenDigest([low, high]) = reference.digest("");
        let bytes: Vec<u8> = low.to_le_bytes().into_iter().chain(high.to_le_bytes()).collect();
        assert_eq!(bytes[..4], [0xa3, 0x81, 0x7f, 0x04]);
    }

    #[test]
    fn verification_holds_until_exp_plus_skew_and_while_the_keys_are_unchanged() {
        let v = Verification { provider: ProviderId(0), accepted_until: 1_000, keys_version: 3 };
        assert!(v.holds(999, Some(3)));
        assert!(v.holds(1_000, Some(3)));
        assert!(!v.holds(1_001, Some(3)));
        assert!(!v.holds(10, Some(4)), "keys changed");
        assert!(!v.holds(10, None), "no keys");
        assert!(!v.holds(u64::MAX, Some(3)));
    }
}
