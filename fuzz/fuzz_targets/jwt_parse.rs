//! `jwt::parse` on arbitrary text: never panics; what it accepts is consistent with the input.
#![no_main]

use jwt_authz::authn::jwt::{self, JwtError, TokenLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    // A small depth limit makes the fuzzer reach the depth check with short inputs too.
    let limits = TokenLimits { max_token_bytes: 4096, max_json_depth: 4 };
    match jwt::parse_with_limits(token, &limits) {
        Ok(parsed) => {
            assert!(token.len() <= limits.max_token_bytes);
            assert_eq!(token.matches('.').count(), 2);
            assert!(token.starts_with(parsed.signing_input));
            assert!(parsed.signing_input.ends_with(parsed.payload_segment));
        }
        Err(JwtError::TooLarge) => assert!(token.len() > limits.max_token_bytes),
        Err(_) => {}
    }
    // The default limits must agree on anything that passes the tighter ones.
    if jwt::parse_with_limits(token, &limits).is_ok() {
        assert!(jwt::parse(token).is_ok());
    }
});
