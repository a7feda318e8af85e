//! The pure core through its public API, as the host drives it: configure, fetch keys, decide.

use jwt_authz::authn::claims::ClaimsError;
use jwt_authz::authn::token_cache::TokenCache;
use jwt_authz::authn::verify::{Verifier, VerifyError};
use jwt_authz::authn::AuthnError;
use jwt_authz::config::Config;
use jwt_authz::deny::Denial;
use jwt_authz::engine::{evaluate, evaluate_cached, Decision, HeaderChange, Outcome, Request};
use jwt_authz::fakes::MemoryStore;
use jwt_authz::ids::ProviderId;
use jwt_authz::keys::cache::{FetchResult, JwksCache, Plan, Worker};
use jwt_authz::keys::KeyStore;
use jwt_authz::testkeys::{self, b64};
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.example/realms/shop";
const NOW: u64 = 1_800_000_000;

fn config() -> Config {
    Config::parse(
        json!({
            "jwtRules": [{
                "issuer": ISSUER, "audiences": ["shop"],
                "jwksUri": "https://idp.example/realms/shop/protocol/openid-connect/certs",
                "outputPayloadToHeader": "x-jwt-payload",
                "outputClaimToHeaders": [{"header": "x-user", "claim": "preferred_username"},
                                         {"header": "x-roles", "claim": "realm_access.roles"}]
            }],
            "policies": [
                {"name": "deny-debug", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/debug*"]}}]}]},
                {"name": "shop", "action": "ALLOW", "rules": [
                    {"to": [{"operation": {"paths": ["/healthz"], "methods": ["GET"]}}]},
                    {"from": [{"source": {"requestPrincipals": ["*"]}}],
                     "to": [{"operation": {"paths": ["/api/admin/*"]}}],
                     "when": [{"key": "request.auth.claims[realm_access][roles]", "values": ["admin"]}]}
                ]}
            ]
        })
        .to_string()
        .as_bytes(),
    )
    .expect("valid config")
}

fn jwks_body(kids: &[(&str, usize)]) -> String {
    let keys: Vec<Value> = kids.iter().map(|(kid, i)| testkeys::jwk(testkeys::key(*i), kid)).collect();
    json!({ "keys": keys }).to_string()
}

const WORKER: Worker = Worker { id: 7, wake_token: None };

/// Plans and completes one fetch of `provider` 0 with `body` as the answer.
fn fetch_keys(cache: &mut JwksCache, store: &mut MemoryStore, body: &str, now_ms: u64) {
    let Plan::Fetch(fetch) = cache.plan(store, ProviderId(0), WORKER, true, now_ms) else { panic!("a fetch is due") };
    assert_eq!(fetch.cluster, "outbound|443||idp.example");
    let result = FetchResult::Response { status: 200, cache_control: None, body: body.as_bytes() };
    cache.on_fetch_result(store, WORKER, &fetch, result, now_ms, 0);
}

/// A cache that has fetched the JWKS with key 0 under kid "k0".
fn ready_cache(config: &Config) -> JwksCache {
    let mut cache = JwksCache::new(config.key_sources(), config.max_jwks_bytes);
    fetch_keys(&mut cache, &mut MemoryStore::default(), &jwks_body(&[("k0", 0)]), NOW * 1000);
    cache
}

fn token(claims: Value) -> String {
    let mut payload = json!({
        "iss": ISSUER, "sub": "alice-id", "aud": ["shop", "account"], "exp": NOW + 300, "iat": NOW,
        "preferred_username": "alice", "realm_access": {"roles": ["user", "admin"]}
    });
    for (name, value) in claims.as_object().expect("object") {
        if value.is_null() {
            payload.as_object_mut().expect("object").remove(name);
        } else {
            payload[name] = value.clone();
        }
    }
    testkeys::sign(&json!({"alg": "RS256", "typ": "JWT", "kid": "k0"}), &payload, 0)
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
    let mut pairs = vec![
        (":method".to_string(), method.to_string()),
        (":path".to_string(), path.to_string()),
        (":authority".to_string(), "shop.example".to_string()),
        (":scheme".to_string(), "https".to_string()),
    ];
    pairs.extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    Request::from_header_pairs(pairs)
}

fn decide(config: &Config, keys: &dyn KeyStore, req: &Request) -> Decision {
    decided(evaluate(config, req, keys, NOW))
}

fn decided(outcome: Outcome) -> Decision {
    match outcome {
        Outcome::Decided(decision) => decision,
        Outcome::AwaitKeys(p) => panic!("unexpected wait for provider {p}"),
        Outcome::AwaitIntrospection { provider, .. } => panic!("unexpected introspection by provider {provider}"),
    }
}

fn status(decision: &Decision) -> u32 {
    match decision {
        Decision::Allow { .. } => 200,
        Decision::Deny { denial, realm, .. } => denial.response(realm).status,
        Decision::Bound { .. } | Decision::Proven { .. } => 0,
    }
}

#[test]
fn requests_wait_for_the_first_fetch_then_settle() {
    let config = config();
    let mut cache = JwksCache::new(config.key_sources(), config.max_jwks_bytes);
    let mut store = MemoryStore::default();
    let bearer = format!("Bearer {}", token(json!({})));
    let req = request("GET", "/api/admin/users", &[("authorization", &bearer)]);
    assert_eq!(evaluate(&config, &req, &cache.at(NOW * 1000), NOW), Outcome::AwaitKeys(ProviderId(0)));
    // Requests that need no keys never wait.
    assert_eq!(status(&decide(&config, &cache.at(NOW * 1000), &request("GET", "/healthz", &[]))), 200);
    // One that may wait no longer is refused.
    assert_eq!(status(&decide(&config, &cache.at(NOW * 1000).without_waiting(), &req)), 401);
    fetch_keys(&mut cache, &mut store, &jwks_body(&[("k0", 0)]), NOW * 1000);
    assert_eq!(status(&decide(&config, &cache.at(NOW * 1000), &req)), 200);
}

#[test]
fn a_failed_first_fetch_rejects_with_jwks_unavailable() {
    let config = config();
    let mut cache = JwksCache::new(config.key_sources(), config.max_jwks_bytes);
    let mut store = MemoryStore::default();
    let Plan::Fetch(fetch) = cache.plan(&mut store, ProviderId(0), WORKER, false, NOW * 1000) else { panic!("due") };
    cache.on_fetch_result(&mut store, WORKER, &fetch, FetchResult::NoResponse, NOW * 1000, 0);
    let bearer = format!("Bearer {}", token(json!({})));
    let decision =
        decide(&config, &cache.at(NOW * 1000), &request("GET", "/api/admin/x", &[("authorization", &bearer)]));
    let Decision::Deny { denial, .. } = &decision else { panic!("{decision:?}") };
    assert_eq!(denial.code(), "jwks_fetch_failed");
    assert_eq!(denial.response("r").body, "Jwks remote fetch is failed");
}

#[test]
fn a_rotated_key_is_accepted_after_one_refetch() {
    let config = config();
    let mut cache = JwksCache::new(config.key_sources(), config.max_jwks_bytes);
    let mut store = MemoryStore::default();
    fetch_keys(&mut cache, &mut store, &jwks_body(&[("k0", 0)]), NOW * 1000);
    let rotated = testkeys::sign(
        &json!({"alg": "RS256", "kid": "k1"}),
        &json!({"iss": ISSUER, "sub": "alice-id", "aud": "shop", "exp": NOW + 300, "realm_access": {"roles": ["admin"]}}),
        1,
    );
    let req = request("GET", "/api/admin/x", &[("authorization", &format!("Bearer {rotated}"))]);
    assert_eq!(
        evaluate(&config, &req, &cache.at(NOW * 1000), NOW),
        Outcome::AwaitKeys(ProviderId(0)),
        "an unknown kid waits for a refetch"
    );
    fetch_keys(&mut cache, &mut store, &jwks_body(&[("k1", 1)]), NOW * 1000 + 1);
    assert_eq!(status(&decide(&config, &cache.at(NOW * 1000), &req)), 200);
    // The old key is gone, and another unknown kid within the interval gets no refetch.
    let old = format!("Bearer {}", token(json!({})));
    let decision = decide(&config, &cache.at(NOW * 1000), &request("GET", "/api/admin/x", &[("authorization", &old)]));
    let Decision::Deny { denial, .. } = &decision else { panic!("{decision:?}") };
    assert_eq!(denial.code(), "jwks_kid_not_found");
}

#[test]
fn allowed_requests_lose_the_token_and_gain_claim_headers() {
    let config = config();
    let cache = ready_cache(&config);
    let jwt = token(json!({}));
    let bearer = format!("Bearer {jwt}");
    let req =
        request("GET", "/api/admin/users", &[("authorization", &bearer), ("x-user", "mallory"), ("x-roles", "admin")]);
    let Decision::Allow { changes, principal, .. } = decide(&config, &cache.at(NOW * 1000), &req) else {
        panic!("allowed")
    };
    assert_eq!(principal.as_deref(), Some("https://idp.example/realms/shop/alice-id"));
    let payload_segment = jwt.split('.').nth(1).expect("payload").to_string();
    assert_eq!(
        changes,
        vec![
            HeaderChange::Remove("x-jwt-payload".into()),
            HeaderChange::Remove("x-roles".into()),
            HeaderChange::Remove("x-user".into()),
            HeaderChange::Remove("authorization".into()),
            HeaderChange::Set("x-jwt-payload".into(), payload_segment),
            HeaderChange::Set("x-user".into(), "alice".into()),
            HeaderChange::Set("x-roles".into(), "user,admin".into()),
        ]
    );
    // Anonymous but allowed: spoofed output headers are still removed.
    let Decision::Allow { changes, principal: None, .. } =
        decide(&config, &cache.at(NOW * 1000), &request("GET", "/healthz", &[("x-user", "mallory")]))
    else {
        panic!("allowed")
    };
    assert!(changes.contains(&HeaderChange::Remove("x-user".into())));
}

#[test]
fn the_401_403_split() {
    let config = config();
    let cache = ready_cache(&config);
    let admin = format!("Bearer {}", token(json!({})));
    let user = format!("Bearer {}", token(json!({"realm_access": {"roles": ["user"]}})));
    let cases: Vec<(Request, u32, &str)> = vec![
        (request("GET", "/api/admin/x", &[]), 401, "jwt_missing"),
        (request("GET", "/debug/pprof", &[]), 401, "jwt_missing"),
        (request("GET", "/api/admin/x", &[("authorization", &user)]), 403, "rbac_access_denied"),
        (request("GET", "/debug/pprof", &[("authorization", &admin)]), 403, "rbac_access_denied"),
        (request("GET", "/api/admin/../../debug/x", &[("authorization", &admin)]), 403, "rbac_access_denied"),
        (request("GET", "/api%2Fadmin/x", &[("authorization", &admin)]), 400, "path_encoded_slash"),
    ];
    for (req, want_status, want_code) in cases {
        let decision = decide(&config, &cache.at(NOW * 1000), &req);
        let Decision::Deny { denial, realm, .. } = &decision else { panic!("{} should be denied", req.path) };
        assert_eq!((denial.response(realm).status, denial.code()), (want_status, want_code), "{}", req.path);
    }
    let Decision::Deny { denial: Denial::Forbidden { policy }, realm, .. } =
        decide(&config, &cache.at(NOW * 1000), &request("GET", "/debug/x?a=1", &[("authorization", &admin)]))
    else {
        panic!("forbidden")
    };
    assert_eq!(policy.as_deref(), Some("deny-debug"));
    assert_eq!(realm, "https://shop.example/debug/x");
}

#[test]
fn every_rejection_reason_is_a_401_even_where_no_identity_is_needed() {
    let config = config();
    let cache = ready_cache(&config);
    let header = |h: Value| b64(h.to_string());
    let valid = token(json!({}));
    let mut tampered_parts: Vec<String> = valid.split('.').map(str::to_string).collect();
    tampered_parts[1] = b64(json!({"iss": ISSUER, "sub": "root", "aud": "shop", "exp": NOW + 300}).to_string());
    let other_key = testkeys::sign(
        &json!({"alg": "RS256", "kid": "k0"}),
        &json!({"iss": ISSUER, "aud": "shop", "exp": NOW + 300}),
        1,
    );
    let unknown_kid = testkeys::sign(
        &json!({"alg": "RS256", "kid": "nope"}),
        &json!({"iss": ISSUER, "aud": "shop", "exp": NOW + 300}),
        0,
    );
    let cases: Vec<(String, &str)> = vec![
        ("not-a-jwt".into(), "jwt_bad_format"),
        (format!("{}.{}.%%%", header(json!({"alg": "RS256"})), b64("{}")), "jwt_bad_base64"),
        (
            format!("{}.{}.AA", header(json!({"alg": "none"})), b64(json!({"iss": ISSUER}).to_string())),
            "jwt_alg_not_allowed",
        ),
        (
            format!("{}.{}.AA", header(json!({"alg": "HS256"})), b64(json!({"iss": ISSUER}).to_string())),
            "jwt_alg_not_allowed",
        ),
        (token(json!({"iss": "https://evil.example"})), "jwt_unknown_issuer"),
        (token(json!({"iss": null})), "jwt_unknown_issuer"),
        (token(json!({"exp": NOW - 61})), "jwt_expired"),
        (token(json!({"exp": null})), "jwt_missing_exp"),
        (token(json!({"nbf": NOW + 120})), "jwt_not_yet_valid"),
        (token(json!({"aud": "account"})), "jwt_audience_not_allowed"),
        (tampered_parts.join("."), "jwt_signature_invalid"),
        (other_key, "jwt_signature_invalid"),
        (unknown_kid, "jwks_kid_not_found"),
    ];
    // Requests that may not wait: an unknown kid would otherwise wait for a refetch.
    let keys = cache.at(NOW * 1000).without_waiting();
    for (jwt, code) in cases {
        for req in [
            request("GET", "/healthz", &[("authorization", &format!("Bearer {jwt}"))]),
            request("GET", &format!("/healthz?access_token={jwt}"), &[]),
        ] {
            let decision = decide(&config, &keys, &req);
            let Decision::Deny { denial, realm, .. } = &decision else { panic!("{code}: {decision:?}") };
            let response = denial.response(realm);
            assert_eq!((response.status, denial.code()), (401, code), "{}", req.path);
            let challenge = &response.headers.iter().find(|(n, _)| *n == "www-authenticate").expect("challenge").1;
            assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        }
    }
    // One good and one bad token: the bad one rejects the request.
    let req = request(
        "GET",
        &format!("/api/admin/x?access_token={}", token(json!({"exp": NOW - 3600}))),
        &[("authorization", &format!("Bearer {valid}"))],
    );
    assert_eq!(status(&decide(&config, &cache.at(NOW * 1000), &req)), 401);
}

// --- Policy features through the engine: requirements, addresses, ports, notes ---------------------

const ADMIN_ISSUER: &str = "https://idp.example/realms/admin";

/// Two issuers with inline keys (key 0 for the shop realm, key 1 for the admin realm).
fn two_issuer_config(extra: Value) -> Config {
    let jwks = |kid: &str, key: usize| json!({"keys": [testkeys::jwk(testkeys::key(key), kid)]}).to_string();
    let mut config = json!({
        "jwtRules": [
            {"issuer": ISSUER, "audiences": ["shop"], "jwks": jwks("k0", 0)},
            {"issuer": ADMIN_ISSUER, "audiences": ["shop"], "jwks": jwks("k1", 1),
             "fromHeaders": [{"name": "x-admin-token"}]}
        ],
        "tokenRequirements": [
            {"name": "health", "match": {"paths": ["/healthz", "/ready"], "methods": ["GET"]}, "skipValidation": true},
            {"name": "admin-only", "match": {"paths": ["/admin/{**}"]}, "issuers": [ADMIN_ISSUER]}
        ],
        "policies": [{"name": "anyone-with-a-token", "rules": [
            {"from": [{"source": {"requestPrincipals": ["*"]}}]},
            {"to": [{"operation": {"paths": ["/healthz", "/ready"]}}]}
        ]}]
    });
    for (name, value) in extra.as_object().expect("object") {
        config[name] = value.clone();
    }
    Config::parse(config.to_string().as_bytes()).expect("valid config")
}

fn admin_token() -> String {
    let payload = json!({"iss": ADMIN_ISSUER, "sub": "root-id", "aud": "shop", "exp": NOW + 300});
    testkeys::sign(&json!({"alg": "RS256", "kid": "k1"}), &payload, 1)
}

fn denial_code(decision: &Decision) -> (u32, &'static str, Option<String>) {
    match decision {
        Decision::Allow { .. } => (200, "allowed", None),
        Decision::Deny { denial, realm, .. } => {
            (denial.response(realm).status, denial.code(), denial.policy().map(str::to_string))
        }
        Decision::Bound { .. } => (0, "bound", None),
        Decision::Proven { .. } => (0, "proven", None),
    }
}

#[test]
fn token_requirements_skip_validation_or_require_an_issuer() {
    let config = two_issuer_config(json!({}));
    let cache = JwksCache::new(config.key_sources(), config.max_jwks_bytes);
    let shop = format!("Bearer {}", token(json!({})));
    let admin = admin_token();
    let garbage = "Bearer not-a-jwt";
    type Expected<'a> = (u32, &'a str, Option<&'a str>);
    let cases: Vec<(Request, Expected)> = vec![
        // Health checks: a broken token is not even looked at.
        (request("GET", "/healthz", &[("authorization", garbage)]), (200, "allowed", None)),
        (request("GET", "/ready?access_token=garbage", &[]), (200, "allowed", None)),
        // Only GET is exempt; elsewhere every token present is still validated.
        (request("POST", "/healthz", &[("authorization", garbage)]), (401, "jwt_bad_format", None)),
        (request("GET", "/healthz/../shop", &[("authorization", garbage)]), (401, "jwt_bad_format", None)),
        // The admin area needs the admin issuer's token, from where that issuer accepts tokens.
        (request("GET", "/admin/users", &[]), (401, "jwt_missing", Some("admin-only"))),
        (request("GET", "/admin/users", &[("authorization", &shop)]), (401, "jwt_missing", Some("admin-only"))),
        (request("GET", "/admin/users", &[("x-admin-token", &admin)]), (200, "allowed", None)),
        (request("GET", "/admin/users?x=1", &[]), (401, "jwt_missing", Some("admin-only"))),
        (
            request("GET", "/admin/users", &[("x-admin-token", &admin), ("authorization", &shop)]),
            (200, "allowed", None),
        ),
        // Elsewhere the shop token is fine and so is the admin one.
        (request("GET", "/shop", &[("authorization", &shop)]), (200, "allowed", None)),
        (request("GET", "/shop", &[("x-admin-token", &admin)]), (200, "allowed", None)),
        (request("GET", "/shop", &[]), (401, "jwt_missing", None)),
    ];
    for (req, (status, code, policy)) in cases {
        let got = denial_code(&decide(&config, &cache.at(NOW * 1000), &req));
        assert_eq!(got, (status, code, policy.map(str::to_string)), "{} {}", req.method, req.path);
    }
    // A token of another configured issuer, found where the required one looks, is not accepted.
    let shop_in_admin_header = token(json!({}));
    let config_both_locations = two_issuer_config(json!({"tokenRequirements": [
        {"match": {"paths": ["/admin/*"]}, "issuers": [ADMIN_ISSUER]}
    ]}));
    let cache_both = JwksCache::new(config_both_locations.key_sources(), config_both_locations.max_jwks_bytes);
    let decision = decide(
        &config_both_locations,
        &cache_both.at(NOW * 1000),
        &request("GET", "/admin/x", &[("x-admin-token", &shop_in_admin_header)]),
    );
    assert_eq!(denial_code(&decision), (401, "jwt_unknown_issuer", None));
}

#[test]
fn unvalidated_tokens_never_reach_the_upstream() {
    let config = two_issuer_config(json!({}));
    let cache = JwksCache::new(config.key_sources(), config.max_jwks_bytes);
    let Decision::Allow { changes, principal: None, .. } = decide(
        &config,
        &cache.at(NOW * 1000),
        &request("GET", "/healthz", &[("authorization", "Bearer forged"), ("x-admin-token", "forged")]),
    ) else {
        panic!("allowed")
    };
    assert!(changes.contains(&HeaderChange::Remove("authorization".into())), "{changes:?}");
    assert!(changes.contains(&HeaderChange::Remove("x-admin-token".into())), "{changes:?}");
    // Where only the admin issuer's location is read, the unread shop header goes too.
    let shop = format!("Bearer {}", token(json!({})));
    let Decision::Allow { changes, principal: Some(_), .. } = decide(
        &config,
        &cache.at(NOW * 1000),
        &request("GET", "/admin/x", &[("authorization", &shop), ("x-admin-token", &admin_token())]),
    ) else {
        panic!("allowed")
    };
    assert!(changes.contains(&HeaderChange::Remove("authorization".into())), "{changes:?}");
}

#[test]
fn cors_preflights_need_no_token_unless_configured_and_the_policies_still_decide() {
    // A policy that admits OPTIONS to /admin without a principal, beside the token requirement
    // that /admin needs the admin issuer's token.
    let policies = json!([
        {"name": "anyone-with-a-token", "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]},
        {"name": "preflights", "rules": [{"to": [{"operation": {"methods": ["OPTIONS"], "paths": ["/admin/*"]}}]}]}
    ]);
    let bypass = two_issuer_config(json!({"policies": policies}));
    let authenticate = two_issuer_config(json!({"policies": policies, "corsPreflight": "AUTHENTICATE"}));
    let cache = JwksCache::new(bypass.key_sources(), bypass.max_jwks_bytes);
    let preflight = [("origin", "https://shop.example"), ("access-control-request-method", "DELETE")];
    let decide_at = |config: &Config, method: &str, path: &str, headers: &[(&str, &str)]| {
        denial_code(&decide(config, &cache.at(NOW * 1000), &request(method, path, headers)))
    };
    assert_eq!(decide_at(&bypass, "OPTIONS", "/admin/users", &preflight), (200, "allowed", None));
    // Tokens are not even looked at on a preflight (a broken one is not a 401), and they do not
    // reach the upstream unverified.
    let with_token = [preflight[0], preflight[1], ("authorization", "Bearer garbage")];
    assert_eq!(decide_at(&bypass, "OPTIONS", "/admin/users", &with_token), (200, "allowed", None));
    let Decision::Allow { changes, principal: None, .. } =
        decide(&bypass, &cache.at(NOW * 1000), &request("OPTIONS", "/admin/users", &with_token))
    else {
        panic!("allowed")
    };
    assert!(changes.contains(&HeaderChange::Remove("authorization".into())), "{changes:?}");
    // The policies still decide: no policy admits a preflight elsewhere.
    assert_eq!(decide_at(&bypass, "OPTIONS", "/shop", &preflight), (401, "jwt_missing", None));
    // Not a preflight: OPTIONS without both headers, or with an empty one, or another method.
    for headers in [&preflight[..1], &preflight[1..], &[("origin", ""), preflight[1]][..]] {
        assert_eq!(decide_at(&bypass, "OPTIONS", "/admin/users", headers).1, "jwt_missing", "{headers:?}");
    }
    assert_eq!(decide_at(&bypass, "GET", "/admin/users", &preflight).1, "jwt_missing");
    // corsPreflight: AUTHENTICATE treats a preflight like any request.
    assert_eq!(
        decide_at(&authenticate, "OPTIONS", "/admin/users", &preflight),
        (401, "jwt_missing", Some("admin-only".into()))
    );
}

#[test]
fn unsafe_paths_are_rejected_or_denied_as_configured() {
    let reject = two_issuer_config(json!({}));
    let deny = two_issuer_config(json!({"unsafePaths": "DENY"}));
    for (config, status) in [(&reject, 400), (&deny, 403)] {
        let cache = JwksCache::new(config.key_sources(), config.max_jwks_bytes);
        for path in ["/healthz%00", "/admin%2fusers", "/shop\\x", "/a%zz", "/a%5C..%5Cadmin"] {
            let decision = decide(config, &cache.at(NOW * 1000), &request("GET", path, &[]));
            let (got, code, _) = denial_code(&decision);
            assert_eq!(got, status, "{path}");
            assert!(code.starts_with("path_"), "{path}: {code}");
        }
    }
}

fn with_connection(mut req: Request, peer: &str, port: u16) -> Request {
    req.source_address = Some(peer.to_string());
    req.destination_port = Some(port);
    req
}

#[test]
fn remote_ip_is_envoys_client_address_and_the_filter_never_reads_x_forwarded_for() {
    // remote.ip is Envoy's `source.address` (its connection manager already applied
    // X-Forwarded-For and its trusted hops); a header the client writes changes nothing here.
    let config = two_issuer_config(json!({
        "tokenRequirements": [],
        "policies": [
            {"name": "office-only", "action": "DENY", "rules": [
                {"to": [{"operation": {"paths": ["/office/*"]}}], "when": [{"key": "remote.ip", "notValues": ["198.51.100.0/24"]}]}
            ]},
            {"name": "admin-port", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin/*"], "notPorts": ["9443"]}}]}]}
        ]
    }));
    assert!(!config.peer_is_source_address);
    let cache = JwksCache::new(config.key_sources(), config.max_jwks_bytes);
    let bearer = format!("Bearer {}", token(json!({})));
    let auth = ("authorization", bearer.as_str());
    let office = |xff: &str, address: &str| {
        with_connection(request("GET", "/office/x", &[auth, ("x-forwarded-for", xff)]), address, 8443)
    };
    let cases = [
        (office("203.0.113.9", "198.51.100.4:5555"), 200),
        (office("198.51.100.4", "203.0.113.9:5555"), 403),
        // As Envoy's CidrRange: an IPv4-mapped address is not in an IPv4 block.
        (office("198.51.100.4", "[::ffff:198.51.100.4]:0"), 403),
        (request("GET", "/office/x", &[auth, ("x-forwarded-for", "198.51.100.4")]), 403),
        // The admin area only on the admin listener, whatever the Host header says.
        (with_connection(request("GET", "/admin/x", &[auth]), "10.0.0.2:1", 9443), 200),
        (with_connection(request("GET", "/admin/x", &[auth, ("host", "shop.example:9443")]), "10.0.0.2:1", 8443), 403),
    ];
    for (req, want) in cases {
        let got = status(&decide(&config, &cache.at(NOW * 1000), &req));
        assert_eq!(got, want, "{} {:?} {:?}", req.path, req.headers, req.source_address);
    }
}

#[test]
fn source_ip_is_read_only_behind_a_connection_manager_that_shows_the_peer() {
    let policies = json!([{"name": "lb-only", "action": "DENY", "rules": [{"from": [{"source": {"notIpBlocks": ["10.0.0.0/8"]}}]}]}]);
    let parse = |extra: Value| {
        let mut config = json!({"jwtRules": [], "policies": policies});
        config.as_object_mut().expect("object").extend(extra.as_object().cloned().unwrap_or_default());
        Config::parse(config.to_string().as_bytes())
    };
    // No statement, or a connection manager that takes the address from X-Forwarded-For: refused,
    // never guessed.
    for extra in [
        json!({}),
        json!({"connectionManager": {"useRemoteAddress": false}}),
        json!({"connectionManager": {"useRemoteAddress": true, "xffNumTrustedHops": 1}}),
    ] {
        let err = parse(extra.clone()).expect_err("refused");
        assert_eq!(err.field, "policies[0].rules[0].from[0].source.notIpBlocks", "{extra}");
        assert!(err.reason.contains("use_remote_address"), "{err}");
    }
    assert_eq!(parse(json!({"numTrustedProxies": 1})).expect_err("refused").field, "numTrustedProxies");
    let config = parse(json!({"connectionManager": {"useRemoteAddress": true}})).expect("valid");
    let cache = JwksCache::new(config.key_sources(), config.max_jwks_bytes);
    let cases = [
        (with_connection(request("GET", "/shop", &[]), "10.0.0.2:5555", 8443), 200),
        // Denied (401: no token either); the header the client wrote changes nothing.
        (with_connection(request("GET", "/shop", &[("x-forwarded-for", "10.0.0.2")]), "192.168.1.1:5555", 8443), 401),
        (with_connection(request("GET", "/shop", &[]), "10.1.1.1:5555", 8443), 200),
        // Unknown peer: notIpBlocks holds, so the DENY applies.
        (request("GET", "/shop", &[]), 401),
    ];
    for (req, want) in cases {
        let got = status(&decide(&config, &cache.at(NOW * 1000), &req));
        assert_eq!(got, want, "{:?} {:?}", req.headers, req.source_address);
    }
}

#[test]
fn audit_and_dry_run_notes_travel_with_the_decision() {
    use jwt_authz::authz::PolicyNote;
    let config = two_issuer_config(json!({"tokenRequirements": [], "policies": [
        {"name": "audit-orders", "action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/orders/*"]}}]}]},
        {"name": "try-deny-deletes", "action": "DENY", "dryRun": true, "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}
    ]}));
    let cache = JwksCache::new(config.key_sources(), config.max_jwks_bytes);
    let Decision::Allow { notes, .. } = decide(&config, &cache.at(NOW * 1000), &request("DELETE", "/orders/7", &[]))
    else {
        panic!("dry-run policies are not enforced")
    };
    assert_eq!(
        notes,
        vec![
            PolicyNote::Audited { policy: "audit-orders".into() },
            PolicyNote::DryRunWouldDeny { policy: Some("try-deny-deletes".into()) }
        ]
    );
}

// --- The verified-token cache: a cached verification decides exactly what a fresh one would ------

/// The decision with `tokens` as the token cache, at `now` (seconds).
fn decide_cached(config: &Config, keys: &dyn KeyStore, tokens: &mut TokenCache, req: &Request, now: u64) -> Decision {
    decided(evaluate_cached(config, req, keys, &Verifier::in_vm(), tokens, now))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn cached_decisions_equal_fresh_ones_and_policies_run_every_time() {
    let config = config();
    let cache = ready_cache(&config);
    let keys = cache.at(NOW * 1000);
    let mut tokens = TokenCache::new();
    let admin = token(json!({}));
    let user = token(json!({"preferred_username": "bob", "sub": "bob-id", "realm_access": {"roles": ["user"]}}));
    let expired = token(json!({"exp": NOW - 3600}));
    let no_exp = token(json!({"exp": null}));
    let wrong_key = testkeys::sign(
        &json!({"alg": "RS256", "kid": "k0"}),
        &json!({"iss": ISSUER, "sub": "x", "aud": "shop", "exp": NOW + 300}),
        1,
    );
    for round in 0..3 {
        for token in [&admin, &user, &expired, &no_exp, &wrong_key] {
            for path in ["/api/admin/users", "/api/orders", "/debug/vars", "/healthz"] {
                let req = request("GET", path, &[("authorization", &bearer(token))]);
                let fresh = decide(&config, &keys, &req);
                assert_eq!(decide_cached(&config, &keys, &mut tokens, &req, NOW), fresh, "round {round} {path}");
            }
        }
    }
    // Only the two valid tokens were remembered (a token without `exp` is refused).
    assert_eq!(tokens.len(), 2);
    let user_on_admin = request("GET", "/api/admin/x", &[("authorization", &bearer(&user))]);
    assert_eq!(status(&decide_cached(&config, &keys, &mut tokens, &user_on_admin, NOW)), 403);
}

#[test]
fn a_cached_token_expires_on_time() {
    let config = config();
    let cache = ready_cache(&config);
    let mut tokens = TokenCache::new();
    let req = request("GET", "/api/admin/x", &[("authorization", &bearer(&token(json!({}))))]);
    let at = |seconds: u64| cache.at(seconds * 1000);
    assert_eq!(status(&decide_cached(&config, &at(NOW), &mut tokens, &req, NOW)), 200);
    // Accepted up to exp plus the 60 s clock skew, then refused though it is still cached.
    assert_eq!(status(&decide_cached(&config, &at(NOW + 360), &mut tokens, &req, NOW + 360)), 200);
    let late = decide_cached(&config, &at(NOW + 361), &mut tokens, &req, NOW + 361);
    assert!(matches!(
        late,
        Decision::Deny { denial: Denial::InvalidToken(AuthnError::Claims(ClaimsError::Expired)), .. }
    ));
}

#[test]
fn new_keys_invalidate_cached_verifications_and_a_plain_refresh_does_not() {
    let config = config();
    let mut cache = JwksCache::new(config.key_sources(), config.max_jwks_bytes);
    let mut store = MemoryStore::default();
    fetch_keys(&mut cache, &mut store, &jwks_body(&[("k0", 0)]), NOW * 1000);
    let mut tokens = TokenCache::new();
    let req = request("GET", "/api/admin/x", &[("authorization", &bearer(&token(json!({"exp": NOW + 7200}))))]);
    assert_eq!(status(&decide_cached(&config, &cache.at(NOW * 1000), &mut tokens, &req, NOW)), 200);
    // A refresh with the same keys keeps the version, so the cached verification still holds.
    let version = cache.at(NOW * 1000).keys_version(ProviderId(0));
    let refresh = NOW + 1200;
    fetch_keys(&mut cache, &mut store, &jwks_body(&[("k0", 0)]), refresh * 1000);
    assert_eq!(cache.at(refresh * 1000).keys_version(ProviderId(0)), version);
    assert_eq!(status(&decide_cached(&config, &cache.at(refresh * 1000), &mut tokens, &req, refresh)), 200);
    // The IdP replaces the key under the same kid: tokens signed with the old one stop working.
    let rotated = NOW + 2400;
    fetch_keys(&mut cache, &mut store, &jwks_body(&[("k0", 1)]), rotated * 1000);
    assert_ne!(cache.at(rotated * 1000).keys_version(ProviderId(0)), version);
    let after = decide_cached(&config, &cache.at(rotated * 1000), &mut tokens, &req, rotated);
    let bad_signature = Denial::InvalidToken(AuthnError::Signature(VerifyError::SignatureInvalid));
    assert!(matches!(after, Decision::Deny { denial, .. } if denial == bad_signature));
}

/// Two issuers reading the same header; the admin one also reads `?token=`, and only the admin
/// issuer's tokens are accepted under /admin.
fn shared_header_config() -> Config {
    let jwks = |kid: &str, key: usize| json!({"keys": [testkeys::jwk(testkeys::key(key), kid)]}).to_string();
    let from_bearer = json!([{"name": "Authorization", "prefix": "Bearer "}]);
    let config = json!({
        "jwtRules": [
            {"issuer": ISSUER, "audiences": ["shop"], "jwks": jwks("k0", 0), "fromHeaders": from_bearer},
            {"issuer": ADMIN_ISSUER, "audiences": ["shop"], "jwks": jwks("k1", 1), "fromHeaders": from_bearer,
             "fromParams": ["token"]}
        ],
        "tokenRequirements": [{"name": "admin-only", "match": {"paths": ["/admin/*"]}, "issuers": [ADMIN_ISSUER]}],
        "policies": [{"name": "anyone-with-a-token", "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}]
    });
    Config::parse(config.to_string().as_bytes()).expect("valid config")
}

#[test]
fn a_cached_token_is_judged_by_the_rule_for_where_it_is_found_and_the_issuers_required_there() {
    let config = shared_header_config();
    let cache = JwksCache::new(config.key_sources(), config.max_jwks_bytes);
    let keys = cache.at(NOW * 1000);
    let mut tokens = TokenCache::new();
    let shop = token(json!({}));
    let admin = admin_token();
    let cases = [
        (request("GET", "/shop", &[("authorization", &bearer(&shop))]), 200),
        (request("GET", "/admin/x", &[("authorization", &bearer(&admin))]), 200),
        // Verified (and cached) above, but the admin area requires the admin issuer.
        (request("GET", "/admin/x", &[("authorization", &bearer(&shop))]), 401),
        // Only the admin issuer reads `?token=`.
        (request("GET", &format!("/shop?token={shop}"), &[]), 401),
        (request("GET", &format!("/shop?token={admin}"), &[]), 200),
    ];
    for round in 0..2 {
        for (req, expected) in &cases {
            let fresh = decide(&config, &keys, req);
            assert_eq!(status(&fresh), *expected, "round {round} {}", req.path);
            assert_eq!(decide_cached(&config, &keys, &mut tokens, req, NOW), fresh, "round {round} {}", req.path);
        }
    }
    assert_eq!(tokens.len(), 2);
}

#[test]
fn a_cached_tokens_signature_vouches_for_no_other_payload() {
    let config = config();
    let cache = ready_cache(&config);
    let keys = cache.at(NOW * 1000);
    let mut tokens = TokenCache::new();
    let user = token(json!({"realm_access": {"roles": ["user"]}}));
    let on_admin = |token: &str| request("GET", "/api/admin/x", &[("authorization", &bearer(token))]);
    assert_eq!(status(&decide_cached(&config, &keys, &mut tokens, &on_admin(&user), NOW)), 403);
    // The same header and signature with a payload granting admin.
    let (header, rest) = user.split_once('.').expect("three parts");
    let signature = rest.rsplit_once('.').expect("three parts").1;
    let payload = json!({
        "iss": ISSUER, "sub": "alice-id", "aud": ["shop"], "exp": NOW + 300, "realm_access": {"roles": ["admin"]}
    });
    let forged = format!("{header}.{}.{signature}", b64(payload.to_string()));
    let decision = decide_cached(&config, &keys, &mut tokens, &on_admin(&forged), NOW);
    let bad_signature = Denial::InvalidToken(AuthnError::Signature(VerifyError::SignatureInvalid));
    assert!(matches!(decision, Decision::Deny { denial, .. } if denial == bad_signature));
}

#[test]
fn the_token_cache_stays_within_its_bounds() {
    let config = config();
    let cache = ready_cache(&config);
    let keys = cache.at(NOW * 1000);
    let mut tokens = TokenCache::with_capacity(5, 2);
    let minted: Vec<String> = (0..12).map(|n| token(json!({"sub": format!("user{n}")}))).collect();
    for round in 0..2 {
        for (n, token) in minted.iter().enumerate() {
            let req = request("GET", "/api/admin/x", &[("authorization", &bearer(token))]);
            assert_eq!(status(&decide_cached(&config, &keys, &mut tokens, &req, NOW)), 200, "round {round}");
            assert_eq!(tokens.len(), if round == 0 { (n + 1).min(5) } else { 5 });
        }
    }
}

#[test]
fn a_certificate_bound_token_makes_every_decision_depend_on_the_certificate() {
    let config = config();
    let cache = ready_cache(&config);
    let keys = cache.at(NOW * 1000);
    let bound = token(json!({"cnf": {"x5t#S256": b64([9u8; 32])}}));
    let user = token(json!({"cnf": {"x5t#S256": b64([9u8; 32])}, "realm_access": {"roles": ["user"]}}));
    // Allowed, denied by a policy, or allowed without any identity needed: each holds only with the
    // certificate, and without it is a 401 (an invalid token), as every other invalid token is.
    for (token, path, with_certificate) in
        [(&bound, "/api/admin/x", 200), (&user, "/api/admin/x", 403), (&bound, "/healthz", 200)]
    {
        let req = request("GET", path, &[("authorization", &bearer(token))]);
        let Decision::Bound { thumbprint, decision, mismatch } = decide(&config, &keys, &req) else { panic!("bound") };
        assert_eq!(thumbprint, [9u8; 32]);
        assert_eq!(status(&decision), with_certificate, "{path}");
        let Decision::Deny { denial, realm, .. } = *mismatch else { panic!("a denial") };
        assert_eq!(denial, Denial::InvalidToken(AuthnError::CertificateMismatch));
        assert_eq!(denial.response(&realm).status, 401);
    }
    // A binding that cannot be read refuses the token; an unbound token decides alone.
    let bad = token(json!({"cnf": {"x5t#S256": "short"}}));
    let req = request("GET", "/api/admin/x", &[("authorization", &bearer(&bad))]);
    let Decision::Deny { denial, .. } = decide(&config, &keys, &req) else { panic!("denied") };
    assert_eq!(denial, Denial::InvalidToken(AuthnError::Claims(ClaimsError::BadConfirmation)));
    let plain = request("GET", "/api/admin/x", &[("authorization", &bearer(&token(json!({}))))]);
    assert!(matches!(decide(&config, &keys, &plain), Decision::Allow { .. }));
}

/// `GET https://shop.example/api/admin/x` with a token bound to the P-256 test key, sent as `scheme`, and
/// a proof of it by `holder` (a proof per call: its own `jti`).
fn dpop_request(claims: Value, scheme: &str, holder: usize, proof_claims: Value) -> Request {
    use jwt_authz::authn::dpop::{access_token_hash, jwk_thumbprint};
    use jwt_authz::keys::alg::Algorithm;
    let jwk_of = |index: usize| testkeys::signing_key(Algorithm::Es256, index).jwk("holder", None);
    let jwt_authz::json::Value::Object(bound_jwk) = jwt_authz::json::Value::from(jwk_of(0)) else { panic!("object") };
    let mut payload = claims;
    let cnf = payload.as_object_mut().expect("object").entry("cnf").or_insert(json!({}));
    cnf["jkt"] = json!(b64(jwk_thumbprint(&bound_jwk).expect("thumbprint")));
    let token = token(payload);
    let mut claims = json!({"jti": format!("{:?}", std::time::Instant::now()), "htm": "GET",
                            "htu": "https://shop.example/api/admin/x", "iat": NOW, "ath": access_token_hash(&token)});
    claims.as_object_mut().expect("object").extend(proof_claims.as_object().cloned().unwrap_or_default());
    let header = json!({"typ": "dpop+jwt", "jwk": jwk_of(holder)});
    let proof = testkeys::signing_key(Algorithm::Es256, holder).sign_token(Algorithm::Es256, &header, &claims);
    request("GET", "/api/admin/x?q=1", &[("authorization", &format!("{scheme} {token}")), ("dpop", &proof)])
}

#[test]
fn a_dpop_bound_token_holds_only_with_its_proof_and_its_jti_is_left_to_record() {
    use jwt_authz::authn::dpop::DpopError;
    let config = config();
    let cache = ready_cache(&config);
    let keys = cache.at(NOW * 1000);
    let mut tokens = TokenCache::with_capacity(16, 4);
    let admin = json!({"realm_access": {"roles": ["admin"]}});
    // The decision waits for the replay store, whatever it is: 200 for an admin, 403 for a user.
    for (claims, inner) in [(admin.clone(), 200), (json!({"realm_access": {"roles": ["user"]}}), 403)] {
        for _ in 0..2 {
            let req = dpop_request(claims.clone(), "DPoP", 0, json!({}));
            let Decision::Proven { proof, decision, replayed } = decide_cached(&config, &keys, &mut tokens, &req, NOW)
            else {
                panic!("proven")
            };
            assert_eq!(proof.until_seconds, NOW + 60);
            assert_eq!(status(&decision), inner);
            assert_eq!(denial_code(&replayed).1, "dpop_proof_replayed");
        }
    }
    let refused = |req: &Request| match decide_cached(&config, &keys, &mut TokenCache::with_capacity(16, 4), req, NOW) {
        Decision::Deny { denial: Denial::InvalidToken(AuthnError::Dpop(error)), .. } => Some(error),
        _ => None,
    };
    let cases = [
        (dpop_request(admin.clone(), "Bearer", 0, json!({})), DpopError::BearerDowngrade),
        (dpop_request(admin.clone(), "DPoP", 1, json!({})), DpopError::KeyMismatch),
        (dpop_request(admin.clone(), "DPoP", 0, json!({"htm": "POST"})), DpopError::MethodMismatch),
        (
            dpop_request(admin.clone(), "DPoP", 0, json!({"htu": "https://shop.example/api/admin/y"})),
            DpopError::UriMismatch,
        ),
        (
            dpop_request(admin.clone(), "DPoP", 0, json!({"htu": "http://shop.example/api/admin/x"})),
            DpopError::UriMismatch,
        ),
        (dpop_request(admin.clone(), "DPoP", 0, json!({"iat": NOW - 120})), DpopError::Stale),
        (dpop_request(admin.clone(), "DPoP", 0, json!({"ath": "AAAA"})), DpopError::TokenHashMismatch),
    ];
    for (req, expected) in cases {
        assert_eq!(refused(&req), Some(expected));
    }
    // A bearer token in the DPoP scheme; a bound token with the proof removed.
    let unbound = request("GET", "/api/admin/x", &[("authorization", &format!("DPoP {}", token(admin.clone())))]);
    assert_eq!(refused(&unbound), Some(DpopError::Unbound));
    let mut bare = dpop_request(admin.clone(), "DPoP", 0, json!({}));
    bare.headers.retain(|(name, _)| name != "dpop");
    assert_eq!(refused(&bare), Some(DpopError::ProofMissing));
    // Certificate-bound and key-bound at once: the proof is recorded first, then the certificate.
    let both = dpop_request(json!({"cnf": {"x5t#S256": b64([9u8; 32])}}), "DPoP", 0, json!({}));
    let Decision::Proven { decision, .. } = decide(&config, &keys, &both) else { panic!("proven") };
    assert!(matches!(*decision, Decision::Bound { thumbprint, .. } if thumbprint == [9u8; 32]));
}

#[test]
fn a_hundred_issuers_each_judge_their_own_tokens() {
    let jwks = jwks_body(&[("k0", 0)]);
    // Issuer names out of order and sharing long prefixes, as realms of one Keycloak do.
    let rules: Vec<Value> = (0..100)
        .map(|i| (i * 37) % 100)
        .map(|n| json!({"issuer": format!("https://idp.example/realms/r{n}"), "audiences": [format!("aud-{n}")], "jwks": jwks}))
        .collect();
    let config = Config::parse(
        json!({"jwtRules": rules, "policies": [{"name": "any", "action": "ALLOW",
               "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}]})
        .to_string()
        .as_bytes(),
    )
    .expect("valid config");
    let cache = JwksCache::new(config.key_sources(), config.max_jwks_bytes);
    let keys = cache.at(NOW * 1000);
    let mut tokens = TokenCache::new();
    for realm in [0, 1, 42, 99, 37] {
        let issuer = format!("https://idp.example/realms/r{realm}");
        // Each entry has its own audience: a token judged by another entry would be refused.
        let token = token(json!({"iss": issuer, "aud": format!("aud-{realm}")}));
        let req = request("GET", "/x", &[("authorization", &bearer(&token))]);
        for decision in [decide(&config, &keys, &req), decide_cached(&config, &keys, &mut tokens, &req, NOW)] {
            let Decision::Allow { principal, .. } = decision else { panic!("{issuer}: {decision:?}") };
            assert_eq!(principal.as_deref(), Some(format!("{issuer}/alice-id").as_str()));
        }
    }
    for unknown in ["https://idp.example/realms/r100", "https://idp.example/realms/", "https://idp.example/realms/r9x"]
    {
        let req = request("GET", "/x", &[("authorization", &bearer(&token(json!({"iss": unknown}))))]);
        assert_eq!(denial_code(&decide(&config, &keys, &req)).1, "jwt_unknown_issuer", "{unknown}");
    }
}

#[test]
fn every_token_of_a_request_is_held_to_its_certificate() {
    let config = config();
    let cache = ready_cache(&config);
    let keys = cache.at(NOW * 1000);
    let plain = token(json!({}));
    let bound = token(json!({"cnf": {"x5t#S256": b64([9u8; 32])}}));
    let other = token(json!({"cnf": {"x5t#S256": b64([8u8; 32])}}));
    // A stolen bound token beside the caller's own bearer token: bound all the same.
    let req = request("GET", &format!("/api/admin/x?access_token={bound}"), &[("authorization", &bearer(&plain))]);
    let Decision::Bound { thumbprint, .. } = decide(&config, &keys, &req) else { panic!("bound") };
    assert_eq!(thumbprint, [9u8; 32]);
    // Two certificates are never both presented.
    let req = request("GET", &format!("/api/admin/x?access_token={other}"), &[("authorization", &bearer(&bound))]);
    let Decision::Deny { denial, .. } = decide(&config, &keys, &req) else { panic!("denied") };
    assert_eq!(denial, Denial::InvalidToken(AuthnError::CertificateMismatch));
}
