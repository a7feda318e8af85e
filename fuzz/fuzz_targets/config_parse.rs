//! `Config::parse` on arbitrary bytes: never panics; a refusal always says why.
#![no_main]

use jwt_authz::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Config::parse(data) {
        Ok(config) => {
            for provider in &config.issuers.providers {
                assert!(!provider.issuer.trim().is_empty());
                assert!(provider.locations.iter().all(|&i| config.issuers.location(i).is_some()));
            }
        }
        Err(err) => assert!(!err.reason.is_empty()),
    }
});
