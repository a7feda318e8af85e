//! `path::normalize`: never panics; its output is canonical and a fixed point.
#![no_main]

use jwt_authz::authz::path::normalize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(normalized) = normalize(raw) else { return };
    assert!(normalized.starts_with('/'), "{raw:?} -> {normalized:?}");
    assert!(!normalized.contains("//"), "{raw:?} -> {normalized:?}");
    assert!(!normalized.split('/').any(|s| s == ".." || s == "."), "{raw:?} -> {normalized:?}");
    assert!(!normalized.contains(['?', '#', '\\']), "{raw:?} -> {normalized:?}");
    assert!(!normalized.chars().any(char::is_control), "{raw:?} -> {normalized:?}");
    assert_eq!(normalize(&normalized).as_deref(), Ok(normalized.as_str()), "not idempotent for {raw:?}");
});
