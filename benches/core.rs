//! Native microbenchmarks of the request path's pieces: `cargo bench --features test-support`.
//!
//! A plain timing loop (no criterion: it would add a large dev-dependency tree for numbers we only
//! read). Native numbers; inside Envoy's Wasm VM everything is slower by a roughly constant factor.

use jwt_authz::authn::token_cache::{DigestKey, TokenCache, Verification};
use jwt_authz::authn::verify::Verifier;
use jwt_authz::authz::path;
use jwt_authz::authz::MatchInput;
use jwt_authz::config::Config;
use jwt_authz::engine::{evaluate, evaluate_cached, Outcome, Request};
use jwt_authz::identity::Identity;
use jwt_authz::ids::ProviderId;
use jwt_authz::keys::alg::Algorithm;
use jwt_authz::keys::cache::JwksCache;
use jwt_authz::keys::rsa::RsaVerifyKey;
use jwt_authz::keys::{host_crypto, jwks};
use jwt_authz::testkeys;
use rsa::traits::PublicKeyParts;
use rsa::Pkcs1v15Sign;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

const NOW: u64 = 1_700_000_000;

fn bench(name: &str, mut run: impl FnMut()) {
    for _ in 0..10 {
        run();
    }
    let mut iterations = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(700) {
        for _ in 0..10 {
            run();
        }
        iterations += 10;
    }
    let per_iteration = started.elapsed().as_nanos() as f64 / iterations as f64;
    let (value, unit) = if per_iteration >= 10_000.0 { (per_iteration / 1000.0, "µs") } else { (per_iteration, "ns") };
    println!("{name:48} {value:10.2} {unit}/iter");
}

fn keycloak_claims(jti: &str) -> Value {
    json!({
        "exp": NOW + 300, "iat": NOW, "auth_time": NOW, "jti": jti, "iss": "https://idp/realms/shop",
        "aud": ["shop", "account"], "sub": "0c8f1a0e-7d7b-5b39-9b9e-4d3c2f1e0a9b", "typ": "Bearer", "azp": "shop-web",
        "session_state": "s", "acr": "1", "allowed-origins": ["*"],
        "realm_access": {"roles": ["default-roles-shop", "offline_access", "user", "admin"]},
        "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
        "scope": "openid profile email", "email_verified": true, "name": "Alice Admin",
        "preferred_username": "alice", "given_name": "Alice", "family_name": "Admin", "email": "alice@shop.example"
    })
}

fn config() -> Config {
    let jwks = json!({"keys": [testkeys::jwk(testkeys::key(0), "k1")]}).to_string();
    Config::parse(
        json!({
            "jwtRules": [{"issuer": "https://idp/realms/shop", "audiences": ["shop"], "jwks": jwks}],
            "policies": [
                {"name": "deny-debug", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/debug*"]}}]}]},
                {"name": "shop", "action": "ALLOW", "rules": [
                    {"to": [{"operation": {"paths": ["/healthz"], "methods": ["GET"]}}]},
                    {"from": [{"source": {"requestPrincipals": ["*"]}}], "to": [{"operation": {"paths": ["/api/public/*"]}}]},
                    {"from": [{"source": {"requestPrincipals": ["*"]}}], "to": [{"operation": {"paths": ["/api/admin/*"]}}],
                     "when": [{"key": "request.auth.claims[realm_access][roles]", "values": ["admin"]}]}
                ]}
            ]
        })
        .to_string()
        .as_bytes(),
    )
    .expect("valid config")
}

fn request(token: &str) -> Request {
    Request::from_header_pairs(vec![
        (":method".into(), "GET".into()),
        (":path".into(), "/api/admin/orders?page=2".into()),
        (":authority".into(), "shop.example".into()),
        (":scheme".into(), "https".into()),
        ("authorization".into(), format!("Bearer {token}")),
        ("user-agent".into(), "bench".into()),
        ("accept".into(), "*/*".into()),
    ])
}

fn main() {
    let token = testkeys::sign(&json!({"alg": "RS256", "typ": "JWT", "kid": "k1"}), &keycloak_claims("hot"), 0);
    let (signing_input, signature) = token.rsplit_once('.').expect("three parts");
    let signature = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature).expect("base64url")
    };
    let private = testkeys::key(0);
    let key = RsaVerifyKey::from_be_bytes(&private.n().to_bytes_be(), &private.e().to_bytes_be()).expect("key");
    let public = private.to_public_key();
    println!("token: {} bytes", token.len());

    bench("rs256 verify (keys::rsa, 2048-bit)", || {
        assert!(key.verify_rs256(black_box(signing_input.as_bytes()), black_box(&signature)));
    });
    bench("rs256 verify (rsa crate, for comparison)", || {
        let digest = Sha256::digest(black_box(signing_input.as_bytes()));
        assert!(public.verify(Pkcs1v15Sign::new::<Sha256>(), &digest, black_box(&signature)).is_ok());
    });
    // Every other algorithm in the VM (where the host's verify_signature does not take them), and
    // what handing a signature to the host costs on our side (the foreign call itself is Envoy's).
    for alg in [Algorithm::Ps256, Algorithm::Es256, Algorithm::Es384, Algorithm::Es512, Algorithm::EdDsa] {
        let signer = testkeys::signing_key(alg, 0);
        let jwks = json!({"keys": [signer.jwk("k", None)]}).to_string();
        let public = jwks::parse(jwks.as_bytes()).expect("jwks").key_set.keys.remove(0).key;
        let signature = signer.sign_bytes(alg, signing_input.as_bytes());
        bench(&format!("{alg} verify in the VM"), || {
            assert!(public.verify_in_vm(alg, black_box(signing_input.as_bytes()), black_box(&signature)));
        });
    }
    let rsa_public = jwks::parse(json!({"keys": [testkeys::jwk(private, "k")]}).to_string().as_bytes())
        .expect("jwks")
        .key_set
        .keys
        .remove(0)
        .key;
    bench("host call arguments for RS256 (SPKI + protobuf)", || {
        let spki = rsa_public.spki().expect("rsa");
        black_box(host_crypto::encode_arguments("sha256", &spki, black_box(&signature), signing_input.as_bytes()));
    });
    bench("sha-256 of header.payload (needed by RS256)", || {
        black_box(Sha256::digest(black_box(signing_input.as_bytes())));
    });
    let digest_key = DigestKey::from_std();
    bench("verified-tier key (SipHash-2-4-128 of the token)", || {
        black_box(digest_key.digest(black_box(&token)));
    });
    bench("jwt parse (base64url, header and claims JSON)", || {
        black_box(jwt_authz::authn::jwt::parse(black_box(&token)).is_ok());
    });

    let config = config();
    let mut cache = TokenCache::new();
    let identity = Rc::new(Identity {
        issuer: "https://idp/realms/shop".into(),
        subject: "alice".into(),
        claims: jwt_authz::json::Map::new(),
    });
    let verification = Verification { provider: ProviderId(0), accepted_until: (NOW + 360) as i64, keys_version: 0 };
    let others: Vec<String> = (0..10_000).map(|n| format!("{}{n}", &token[..token.len() - 6])).collect();
    for other in &others {
        cache.insert(other, cache.digest(other), verification, identity.clone());
    }
    cache.insert(&token, cache.digest(&token), verification, identity.clone());
    bench("token cache hit, identity tier (full-token compare)", || {
        assert!(cache.identity(black_box(&token), |v| v.holds(NOW, Some(0))).is_some());
    });
    let mut next = 0usize;
    bench("token cache insertion of a new token (both tiers, full cache)", || {
        next += 1;
        let other = &others[next % others.len()];
        cache.insert(black_box(other), cache.digest(other), verification, identity.clone());
    });
    let digest = cache.digest(&others[100]);
    cache.insert(&others[100], digest, verification, identity.clone());
    bench("token cache hit, verified tier (10,000 entries)", || {
        assert!(cache.verification(black_box(&digest), |v| v.holds(NOW, Some(0))).is_some());
    });

    let claims = keycloak_claims("x");
    let Value::Object(claims) = claims else { unreachable!() };
    let alice = Identity { issuer: "https://idp/realms/shop".into(), subject: "alice".into(), claims: claims.into() };
    let headers = vec![("user-agent".to_string(), "bench".to_string())];
    bench("policy match (admin rule, 1 DENY + 3 ALLOW rules)", || {
        let input = MatchInput {
            path: "/api/admin/orders",
            method: "GET",
            host: "shop.example",
            port: Some(8080),
            source_ip: None,
            remote_ip: None,
            peer: None,
            sni: None,
            destination_ip: None,
            headers: &headers,
            identity: Some(&alice),
        };
        black_box(config.policies.evaluate(black_box(&input)));
    });
    bench("path normalization (/api/v1/../admin/./orders%7E)", || {
        black_box(path::normalize(black_box("/api/v1/../admin/./orders%7E?x=1")).ok());
    });

    let jwks = JwksCache::new(config.key_sources(), config.max_jwks_bytes);
    let jwks = jwks.at(NOW * 1000);
    let hot = request(&token);
    let mut tokens = TokenCache::new();
    bench("engine: request with a cached token (hot)", || {
        let outcome = evaluate_cached(&config, black_box(&hot), &jwks, &Verifier::in_vm(), &mut tokens, NOW);
        assert!(matches!(outcome, Outcome::Decided(jwt_authz::engine::Decision::Allow { .. })));
    });
    bench("engine: request with a new token (cold: parse + verify)", || {
        let outcome = evaluate(&config, black_box(&hot), &jwks, NOW);
        assert!(matches!(outcome, Outcome::Decided(jwt_authz::engine::Decision::Allow { .. })));
    });
}
