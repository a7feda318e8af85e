//! `engine::evaluate` end to end (extraction, parsing, verification with a fixed key set, claims,
//! policy matching, deny responses) on requests built from the input.
//!
//! Input: a mode byte, then newline-separated fields: path, method, authorization value, cookie,
//! host. Mode bit 0 set: the authorization token is a genuinely signed token with byte edits taken
//! from the last field, so the fuzzer explores near-valid tokens it could never sign itself.
//! Invariants: no panic; anything authenticated carries exactly the signed bytes; deny responses
//! use only 400/401/403 and never put a control character into a header; the verified-token cache
//! (shared across inputs, as across requests) never changes a decision.
#![no_main]

use jwt_authz::authn::token_cache::TokenCache;
use jwt_authz::authn::verify::Verifier;
use jwt_authz::config::Config;
use jwt_authz::engine::{evaluate, evaluate_cached, Decision, HeaderChange, Outcome, Request};
use jwt_authz::keys::cache::JwksCache;
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use std::cell::RefCell;
use std::sync::OnceLock;

const ISSUER: &str = "https://idp.example/realms/shop";
const NOW: u64 = 1_800_000_000;

struct Fixture {
    config: Config,
    valid_token: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // A fixed key and a token it signed (for `NOW`), made once with tools/testbed:
        // generating RSA keys per fuzz process would dominate the run.
        let fixed: serde_json::Value = serde_json::from_str(include_str!("engine_fixture.json")).expect("fixture");
        let jwks = fixed["jwks"].to_string();
        let config = Config::parse(
            json!({
                "jwtRules": [{
                    "issuer": ISSUER, "audiences": ["shop"], "jwks": jwks,
                    "fromHeaders": [{"name": "Authorization", "prefix": "Bearer "}],
                    "fromParams": ["access_token"], "fromCookies": ["session"],
                    "outputPayloadToHeader": "x-jwt-payload",
                    "outputClaimToHeaders": [{"header": "x-user", "claim": "preferred_username"}]
                }],
                "policies": [
                    {"name": "deny-debug", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/debug*"]}}]}]},
                    {"name": "shop", "action": "ALLOW", "rules": [
                        {"to": [{"operation": {"paths": ["/healthz"], "methods": ["GET"]}}]},
                        {"from": [{"source": {"requestPrincipals": ["*"]}}],
                         "to": [{"operation": {"paths": ["/api/*"], "notPaths": ["/api/admin/*"]}}]},
                        {"from": [{"source": {"requestPrincipals": [format!("{ISSUER}/*")]}}],
                         "to": [{"operation": {"paths": ["/api/admin/*"]}}],
                         "when": [{"key": "request.auth.claims[realm_access][roles]", "values": ["admin"]}]}
                    ]}
                ]
            })
            .to_string()
            .as_bytes(),
        )
        .expect("fixture config");
        let valid_token = fixed["token"].as_str().expect("token").to_string();
        // The near-valid mode is only worth anything if the unedited token gets in.
        let request = Request {
            method: "GET".into(),
            path: "/api/x".into(),
            headers: vec![("authorization".into(), format!("Bearer {valid_token}"))],
            ..Request::default()
        };
        // Inline keys (the only kind a fuzzed configuration can use here) are always ready.
        let cache = JwksCache::new(config.key_sources(), config.max_jwks_bytes);
        let outcome = evaluate(&config, &request, &cache.at(NOW * 1000), NOW);
        assert!(matches!(outcome, Outcome::Decided(Decision::Allow { principal: Some(_), .. })), "{outcome:?}");
        Fixture { config, valid_token }
    })
}

fn signing_input(token: &str) -> &str {
    token.rsplit_once('.').map(|(input, _)| input).unwrap_or(token)
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let Some((&mode, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let mut fields = text.split('\n');
    let mut field = || fields.next().unwrap_or_default().to_string();
    let (path, method, mut authorization, cookie, host) = (field(), field(), field(), field(), field());
    let edits = field();
    if mode & 1 == 1 {
        let mut token = fixture.valid_token.clone().into_bytes();
        for pair in edits.as_bytes().chunks(2) {
            if let [position, value] = pair {
                let index = usize::from(*position) * 7 % token.len();
                // Keep it ASCII (and so UTF-8); the base64url alphabet plus separators.
                token[index] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.="[usize::from(*value) % 66];
            }
        }
        authorization = format!("Bearer {}", String::from_utf8(token).expect("ascii"));
    }
    let mut headers = Vec::new();
    if !authorization.is_empty() {
        headers.push(("authorization".to_string(), authorization.clone()));
    }
    if !cookie.is_empty() {
        headers.push(("cookie".to_string(), cookie));
    }
    let request = Request { method, path, authority: host, scheme: "http".into(), headers, ..Request::default() };
    let cache = JwksCache::new(fixture.config.key_sources(), fixture.config.max_jwks_bytes);
    let keys = cache.at(NOW * 1000);
    let outcome = evaluate(&fixture.config, &request, &keys, NOW);
    thread_local! {
        static TOKENS: RefCell<TokenCache> = RefCell::new(TokenCache::new());
    }
    let cached = TOKENS.with(|tokens| {
        evaluate_cached(&fixture.config, &request, &keys, &Verifier::in_vm(), &mut tokens.borrow_mut(), NOW)
    });
    assert_eq!(cached, outcome, "the token cache changed a decision");
    match outcome {
        Outcome::Decided(Decision::Allow { changes, principal, .. }) => {
            if principal.is_some() && mode & 1 == 1 {
                let presented = authorization.get(7..).unwrap_or_default();
                assert_eq!(signing_input(presented), signing_input(&fixture.valid_token), "forged token accepted");
            }
            for change in changes {
                if let HeaderChange::Set(_, value) = change {
                    assert!(!value.chars().any(char::is_control));
                }
            }
        }
        Outcome::Decided(Decision::Deny { denial, realm, .. }) => {
            let response = denial.response(&realm);
            assert!(matches!(response.status, 400 | 401 | 403));
            for (_, value) in &response.headers {
                assert!(!value.chars().any(char::is_control), "control character in {value:?}");
            }
        }
        // Only a verified token with `cnf.x5t#S256` is bound; without its certificate, a 401.
        Outcome::Decided(Decision::Bound { mismatch, decision, .. }) => {
            let Decision::Deny { denial, realm, .. } = *mismatch else { panic!("a bound decision's mismatch allows") };
            assert_eq!(denial.response(&realm).status, 401);
            assert!(!matches!(*decision, Decision::Bound { .. }), "bound twice");
            if let Decision::Allow { changes, .. } = *decision {
                for change in changes {
                    if let HeaderChange::Set(_, value) = change {
                        assert!(!value.chars().any(char::is_control));
                    }
                }
            }
        }
        // A proof needs a `DPoP` header, which these requests never have.
        Outcome::Decided(Decision::Proven { .. }) => panic!("proven without a DPoP proof"),
        Outcome::AwaitKeys(_) => panic!("inline keys never need a fetch"),
        Outcome::AwaitIntrospection { .. } => panic!("no entry introspects, and evaluate knows no answers"),
    }
});
