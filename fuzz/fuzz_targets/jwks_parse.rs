//! `jwks::parse` on arbitrary bytes: never panics; every key it keeps is usable (an RSA key of an
//! accepted size, or an EC/Ed25519 key), bound to an algorithm of its own family, and round-trips
//! through the minimal JWKS the workers share.
#![no_main]

use jwt_authz::keys::jwks;
use jwt_authz::keys::public_key::PublicKey;
use jwt_authz::keys::rsa::{MAX_MODULUS_BITS, MIN_MODULUS_BITS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = jwks::parse_with_limit(data, 64 * 1024) {
        assert!(data.len() <= 64 * 1024);
        assert!(!parsed.key_set.keys.is_empty());
        for key in &parsed.key_set.keys {
            if let PublicKey::Rsa(rsa) = &key.key {
                assert!((MIN_MODULUS_BITS..=MAX_MODULUS_BITS).contains(&rsa.bits()));
            }
            assert!(key.alg.is_none_or(|alg| alg.family() == key.key.family()));
        }
        let copy = jwks::parse(parsed.key_set.to_jwks_json().as_bytes()).expect("the shared copy parses");
        assert_eq!(copy.key_set, parsed.key_set);
        let kids: Vec<_> = parsed.key_set.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        let mut unique = kids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(kids.len(), unique.len(), "duplicate kid kept");
    }
});
