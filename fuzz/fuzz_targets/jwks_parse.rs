//! `jwks::parse` on arbitrary bytes: never panics; every key it keeps is an RS256-sized RSA key.
#![no_main]

use jwt_authz::keys::jwks;
use jwt_authz::keys::rsa::{MAX_MODULUS_BITS, MIN_MODULUS_BITS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = jwks::parse_with_limit(data, 64 * 1024) {
        assert!(data.len() <= 64 * 1024);
        assert!(!parsed.key_set.keys.is_empty());
        for key in &parsed.key_set.keys {
            assert!((MIN_MODULUS_BITS..=MAX_MODULUS_BITS).contains(&key.key.bits()));
        }
        let kids: Vec<_> = parsed.key_set.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        let mut unique = kids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(kids.len(), unique.len(), "duplicate kid kept");
    }
});
