use super::*;
use crate::authn::claims::ClaimsError;
use crate::config::Config;
use serde_json::json;

const NOW: u64 = 1_800_000_000;
const ISSUER: &str = "https://idp.example/realms/shop";

fn config(secret: serde_json::Value) -> Config {
    let mut introspection = json!({
        "endpoint": "https://idp.example/realms/shop/protocol/openid-connect/token/introspect",
        "clientId": "shop gateway", "cacheDuration": "30s",
    });
    introspection.as_object_mut().expect("object").extend(secret.as_object().cloned().unwrap_or_default());
    let rule = json!({"issuer": ISSUER, "audiences": ["shop"], "jwksUri": "https://idp.example/certs",
                      "introspection": introspection});
    Config::parse(json!({"jwtRules": [rule]}).to_string().as_bytes()).expect("valid")
}

fn provider(config: &Config) -> (&Provider, &Introspection) {
    let provider = config.issuers.provider(ProviderId(0)).expect("provider");
    (provider, provider.introspection.as_ref().expect("introspection"))
}

fn judge(body: serde_json::Value) -> Judgement {
    let config = config(json!({"clientSecret": "s3cr:t"}));
    let (provider, introspection) = provider(&config);
    introspection.judge(provider, Some((200, body.to_string().as_bytes())), NOW)
}

#[test]
fn the_call_is_a_form_post_with_basic_credentials() {
    let config = config(json!({"clientSecret": "s3cr:t"}));
    let (_, introspection) = provider(&config);
    let call = introspection.call(ProviderId(0), ISSUER, "opaque+token/=", NOW).expect("a call");
    assert_eq!(call.cluster, "outbound|443||idp.example");
    assert_eq!(call.body, "token=opaque%2Btoken%2F%3D&token_type_hint=access_token");
    let header = |name: &str| call.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
    assert_eq!(header(":method"), Some("POST"));
    assert_eq!(header(":path"), Some("/realms/shop/protocol/openid-connect/token/introspect"));
    assert_eq!(header("content-type"), Some("application/x-www-form-urlencoded"));
    // RFC 6749 §2.3.1: "shop gateway" and "s3cr:t" form-encoded, then base64.
    use base64::Engine as _;
    let expected = base64::engine::general_purpose::STANDARD.encode("shop%20gateway:s3cr%3At");
    assert_eq!(header("authorization"), Some(format!("Basic {expected}").as_str()));
    assert_eq!(call.key, answer_key(ISSUER, introspection, "opaque+token/="));
    assert_ne!(call.key, answer_key("https://other", introspection, "opaque+token/="), "another issuer's");
    let mut elsewhere = introspection.clone();
    elsewhere.target.path.push('x');
    assert_ne!(call.key, answer_key(ISSUER, &elsewhere, "opaque+token/="), "another endpoint's");
    // Nothing secret in what could be logged.
    let debug = format!("{call:?} {:?}", introspection.secret);
    assert!(!debug.contains("s3cr") && !debug.contains("opaque"), "{debug}");
    // A secret from the environment, not read yet: no call.
    let unread = self::config(json!({"clientSecretEnv": "SECRET"}));
    assert!(provider(&unread).1.call(ProviderId(0), ISSUER, "t", NOW).is_none());
}

#[test]
fn an_active_answer_is_an_identity_held_until_exp_or_the_cache_duration() {
    let answer = json!({"active": true, "iss": ISSUER, "sub": "alice-id", "aud": "shop", "exp": NOW + 10, "token_type": "Bearer",
                        "scope": "orders:read", "client_id": "shop-web"});
    let judgement = judge(answer);
    let identity = judgement.result.expect("active");
    assert_eq!((identity.issuer.as_str(), identity.subject.as_str()), (ISSUER, "alice-id"));
    assert_eq!(identity.claims.get("scope").and_then(Value::as_str), Some("orders:read"));
    assert!(identity.claims.get("active").is_none());
    // exp + the 60 s skew is after the 30 s cache duration: the cache duration ends it.
    assert_eq!(judgement.until_seconds, NOW + 30);
    let soon = judge(json!({"active": true, "aud": "shop", "exp": NOW - 50}));
    assert_eq!(soon.until_seconds, NOW + 10, "exp + skew first");
    assert!(soon.result.is_ok(), "iss may be absent: the entry's");
}

#[test]
fn everything_else_is_refused() {
    let inactive = judge(json!({"active": false}));
    assert!(matches!(inactive.result, Err(AuthnError::Introspection(IntrospectionError::Inactive))));
    assert_eq!(inactive.until_seconds, NOW + 30, "revocation is remembered as long as activity");
    let cases = [
        (json!({"active": "true", "exp": NOW + 10}), AuthnError::Introspection(IntrospectionError::Inactive)),
        (json!({"exp": NOW + 10}), AuthnError::Introspection(IntrospectionError::Inactive)),
        (
            json!({"active": true, "iss": "https://evil", "aud": "shop", "exp": NOW + 10}),
            AuthnError::Introspection(IntrospectionError::IssuerMismatch),
        ),
        (json!({"active": true, "aud": "other", "exp": NOW + 10}), AuthnError::Claims(ClaimsError::AudienceNotAllowed)),
        (json!({"active": true, "aud": "shop"}), AuthnError::Claims(ClaimsError::MissingExpiration)),
        (json!({"active": true, "aud": "shop", "exp": NOW - 100}), AuthnError::Claims(ClaimsError::Expired)),
        (json!({"active": true, "aud": "shop", "exp": "soon"}), AuthnError::Introspection(IntrospectionError::Failed)),
        (json!([true]), AuthnError::Introspection(IntrospectionError::Failed)),
        (
            json!({"active": true, "aud": "shop", "exp": NOW + 10, "token_type": "Refresh"}),
            AuthnError::Introspection(IntrospectionError::NotAnAccessToken),
        ),
        (
            json!({"active": true, "aud": "shop", "exp": NOW + 10, "token_type": "ID"}),
            AuthnError::Introspection(IntrospectionError::NotAnAccessToken),
        ),
    ];
    for (answer, expected) in cases {
        assert_eq!(judge(answer.clone()).result.err(), Some(expected), "{answer}");
    }
    let config = config(json!({"clientSecret": "s"}));
    let (provider, introspection) = provider(&config);
    for answer in [None, Some((500, &b"{\"active\":true}"[..])), Some((200, &b"not json"[..]))] {
        let judgement = introspection.judge(provider, answer, NOW);
        assert_eq!(judgement.result.err(), Some(AuthnError::Introspection(IntrospectionError::Failed)));
        assert_eq!(judgement.until_seconds, NOW + FAILURE_MEMORY_SECONDS, "failures are not remembered long");
    }
}

#[test]
fn only_tokens_that_are_not_a_jws_are_opaque() {
    assert!(is_opaque("2YotnFZFEjr1zCsicMWpAA"));
    assert!(is_opaque("a.b"));
    assert!(!is_opaque("a.b.c"));
}
