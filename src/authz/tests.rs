//! Unit tests of policy evaluation: every Istio field, the order of DENY/ALLOW/AUDIT, dry-run.

use super::*;
use crate::identity::Identity;
use serde_json::json;
use serde_json::Value;

const ISS: &str = "https://idp/realms/shop";

fn identity(claims: Value) -> Identity {
    let Value::Object(mut claims) = claims else { panic!("object") };
    claims.entry("iss").or_insert(json!(ISS));
    claims.entry("sub").or_insert(json!("alice-id"));
    Identity {
        issuer: claims.get("iss").and_then(Value::as_str).unwrap_or_default().to_string(),
        subject: claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_string(),
        claims: claims.into(),
    }
}

fn alice() -> Identity {
    identity(json!({
        "realm_access": {"roles": ["user", "admin"]},
        "resource_access": {"shop-backend": {"roles": ["reader"]}},
        "scope": "openid profile email",
        "permission": "orders:read orders:write",
        "entitlements": "gold silver",
        "preferred_username": "alice",
        "email_verified": true,
        "level": 3,
        "azp": "shop-web",
        "aud": ["shop", "account"],
        "https://example.com/group": "staff"
    }))
}

/// A request with every attribute set; each test changes what it is about.
#[derive(Clone)]
struct Req {
    method: &'static str,
    path: &'static str,
    host: &'static str,
    port: Option<u16>,
    source_ip: Option<IpAddr>,
    remote_ip: Option<IpAddr>,
    peer: Option<Peer>,
    sni: Option<&'static str>,
    destination_ip: Option<IpAddr>,
    headers: Vec<(String, String)>,
    who: Option<Identity>,
}

fn req() -> Req {
    Req {
        method: "GET",
        path: "/",
        host: "shop.example",
        port: Some(8080),
        source_ip: Some("10.0.0.5".parse().expect("ip")),
        remote_ip: Some("203.0.113.7".parse().expect("ip")),
        peer: Some(Peer { names: vec!["spiffe://cluster.local/ns/shop/sa/cart".into()] }),
        sni: Some("shop.example"),
        destination_ip: Some("10.1.0.9".parse().expect("ip")),
        headers: vec![("x-env".into(), "prod".into())],
        who: Some(alice()),
    }
}

impl Req {
    fn path(mut self, path: &'static str) -> Req {
        self.path = path;
        self
    }
    fn method(mut self, method: &'static str) -> Req {
        self.method = method;
        self
    }
    fn host(mut self, host: &'static str) -> Req {
        self.host = host;
        self
    }
    fn port(mut self, port: Option<u16>) -> Req {
        self.port = port;
        self
    }
    fn source(mut self, ip: Option<&str>) -> Req {
        self.source_ip = ip.map(|ip| ip.parse().expect("ip"));
        self
    }
    fn remote(mut self, ip: Option<&str>) -> Req {
        self.remote_ip = ip.map(|ip| ip.parse().expect("ip"));
        self
    }
    fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }
    fn who(mut self, who: Option<Identity>) -> Req {
        self.who = who;
        self
    }
    fn anonymous(self) -> Req {
        self.who(None)
    }
}

/// Compiled as the filter compiles them, behind a connection manager that shows the TCP peer (so
/// `source.ip` rules are accepted).
fn policies(mut json: Value) -> Policies {
    if let Some(config) = json.as_object_mut() {
        config.entry("connectionManager").or_insert(json!({"useRemoteAddress": true}));
    }
    crate::config::Config::parse(json.to_string().as_bytes()).expect("valid config").policies
}

fn evaluate(p: &Policies, r: &Req) -> Evaluation {
    p.evaluate(&MatchInput {
        path: r.path,
        method: r.method,
        host: r.host,
        port: r.port,
        source_ip: r.source_ip,
        remote_ip: r.remote_ip,
        peer: r.peer.as_ref(),
        sni: r.sni,
        destination_ip: r.destination_ip,
        headers: &r.headers,
        identity: r.who.as_ref(),
    })
}

fn decide(p: &Policies, r: &Req) -> PolicyDecision {
    evaluate(p, r).decision
}

fn allowed(p: &Policies, r: &Req) -> bool {
    decide(p, r) == PolicyDecision::Allow
}

/// Whether `rule` (as JSON) matches `r`: the only rule of the only ALLOW policy.
fn rule_matches(rule: &Value, r: &Req) -> bool {
    allowed(&policies(json!({"policies": [{"name": "p", "rules": [rule]}]})), r)
}

fn check(table: &[(Value, Req, bool)]) {
    for (rule, r, want) in table {
        assert_eq!(
            rule_matches(rule, r),
            *want,
            "rule {rule} on {} {} host={} port={:?} source={:?} remote={:?} headers={:?} who={:?}",
            r.method,
            r.path,
            r.host,
            r.port,
            r.source_ip,
            r.remote_ip,
            r.headers,
            r.who.as_ref().map(Identity::principal)
        );
    }
}

fn op(operation: Value) -> Value {
    json!({"to": [{"operation": operation}]})
}

fn src(source: Value) -> Value {
    json!({"from": [{"source": source}]})
}

fn when(key: &str, values: Value) -> Value {
    json!({"when": [{"key": key, "values": values}]})
}

fn when_not(key: &str, not_values: Value) -> Value {
    json!({"when": [{"key": key, "notValues": not_values}]})
}

#[test]
fn string_match_forms() {
    assert!(StringMatch::parse("/a").expect("valid").matches("/a"));
    assert!(!StringMatch::parse("/a").expect("valid").matches("/a/"));
    assert!(StringMatch::parse("/api/*").expect("valid").matches("/api/x/y"));
    assert!(!StringMatch::parse("/api/*").expect("valid").matches("/apix"));
    assert!(StringMatch::parse("*.html").expect("valid").matches("/x/index.html"));
    assert!(StringMatch::parse("*").expect("valid").matches("/"));
    assert!(!StringMatch::parse("*").expect("valid").matches(""));
}

#[test]
fn a_matcher_whose_meaning_is_in_doubt_cannot_be_made() {
    for value in ["", "a*b", "*a*", "**"] {
        assert!(StringMatch::parse(value).is_err(), "{value:?}");
        assert!(HostMatch::parse(value).is_err(), "{value:?}");
        assert!(PrincipalMatch::parse(value).is_err(), "{value:?}");
        assert!(PathMatch::parse(value).is_err(), "{value:?}");
    }
    assert!(PrincipalMatch::parse("/alice").is_err(), "an empty issuer");
    // A multi-byte character at either end must not hide a `*` in the middle.
    for value in ["/a*b\u{e9}", "\u{e9}a*b", "\u{e9}*\u{e9}", "*\u{e9}*"] {
        assert!(StringMatch::parse(value).is_err(), "{value:?}");
    }
    assert!(StringMatch::parse("*\u{e9}").is_ok() && StringMatch::parse("\u{e9}*").is_ok());
    assert!(PathMatch::parse("/a/{*}/b").is_ok() && PathMatch::parse("/a/{x}").is_err());
    assert!(HostMatch::parse("Shop.Example").expect("valid").matches("shop.example"));
}

#[test]
fn paths_and_not_paths() {
    check(&[
        (op(json!({"paths": ["/a"]})), req().path("/a"), true),
        (op(json!({"paths": ["/a"]})), req().path("/a/"), false),
        (op(json!({"paths": ["/a"]})), req().path("/A"), false),
        (op(json!({"paths": ["/api/*"]})), req().path("/api/x/y"), true),
        (op(json!({"paths": ["/api/*"]})), req().path("/api"), false),
        (op(json!({"paths": ["/api*"]})), req().path("/apix"), true),
        (op(json!({"paths": ["*.css"]})), req().path("/s/site.css"), true),
        (op(json!({"paths": ["*.css"]})), req().path("/s/site.css.map"), false),
        (op(json!({"paths": ["*"]})), req().path("/"), true),
        (op(json!({"paths": ["/x", "/y"]})), req().path("/y"), true),
        (op(json!({"paths": ["/orders/{*}/items"]})), req().path("/orders/7/items"), true),
        (op(json!({"paths": ["/orders/{*}/items"]})), req().path("/orders/7/8/items"), false),
        (op(json!({"paths": ["/files/{**}"]})), req().path("/files/a/b"), true),
        (op(json!({"paths": ["/files/{**}"]})), req().path("/files"), false),
        (op(json!({"paths": ["/{**}/edit"]})), req().path("/a/b/edit"), true),
        (op(json!({"notPaths": ["/admin*"]})), req().path("/admin/x"), false),
        (op(json!({"notPaths": ["/admin*"]})), req().path("/shop"), true),
        (op(json!({"paths": ["/api/*"], "notPaths": ["/api/internal/*"]})), req().path("/api/internal/x"), false),
        (op(json!({"paths": ["/api/*"], "notPaths": ["/api/{*}/secret"]})), req().path("/api/x/secret"), false),
        (op(json!({"paths": ["/api/*"], "notPaths": ["/api/{*}/secret"]})), req().path("/api/x/y/secret"), true),
    ]);
}

#[test]
fn methods_and_not_methods() {
    check(&[
        (op(json!({"methods": ["GET", "HEAD"]})), req().method("HEAD"), true),
        (op(json!({"methods": ["GET"]})), req().method("POST"), false),
        (op(json!({"methods": ["GET"]})), req().method("get"), false),
        (op(json!({"methods": ["P*"]})), req().method("PATCH"), true),
        (op(json!({"methods": ["*"]})), req().method("OPTIONS"), true),
        (op(json!({"notMethods": ["DELETE"]})), req().method("DELETE"), false),
        (op(json!({"notMethods": ["DELETE"]})), req().method("GET"), true),
        (op(json!({"methods": ["*"], "notMethods": ["P*"]})), req().method("PUT"), false),
    ]);
}

#[test]
fn hosts_are_case_insensitive_with_and_without_port() {
    check(&[
        (op(json!({"hosts": ["shop.example"]})), req().host("shop.example"), true),
        (op(json!({"hosts": ["shop.example"]})), req().host("Shop.EXAMPLE"), true),
        (op(json!({"hosts": ["SHOP.example"]})), req().host("shop.example"), true),
        (op(json!({"hosts": ["shop.example"]})), req().host("shop.example:8443"), true),
        (op(json!({"hosts": ["shop.example"]})), req().host("shop.example.evil"), false),
        (op(json!({"hosts": ["shop.example"]})), req().host("evil.shop.example"), false),
        (op(json!({"hosts": ["shop.example:8443"]})), req().host("shop.example:8443"), true),
        (op(json!({"hosts": ["shop.example:8443"]})), req().host("shop.example"), false),
        (op(json!({"hosts": ["shop.example:8443"]})), req().host("shop.example:9443"), false),
        (op(json!({"hosts": ["*.example"]})), req().host("api.Example:80"), true),
        (op(json!({"hosts": ["*.example"]})), req().host("example"), false),
        (op(json!({"hosts": ["shop.*"]})), req().host("shop.test"), true),
        (op(json!({"hosts": ["*"]})), req().host("anything"), true),
        (op(json!({"hosts": ["[::1]"]})), req().host("[::1]:8080"), true),
        (op(json!({"hosts": ["[::1]:8080"]})), req().host("[::1]:8080"), true),
        (op(json!({"notHosts": ["admin.example"]})), req().host("ADMIN.example:443"), false),
        (op(json!({"notHosts": ["admin.example"]})), req().host("shop.example"), true),
    ]);
}

#[test]
fn ports_and_not_ports() {
    check(&[
        (op(json!({"ports": ["8080"]})), req().port(Some(8080)), true),
        (op(json!({"ports": [8080]})), req().port(Some(8080)), true),
        (op(json!({"ports": ["8080", "9090"]})), req().port(Some(9090)), true),
        (op(json!({"ports": ["8080"]})), req().port(Some(8081)), false),
        (op(json!({"ports": ["8080"]})), req().port(None), false),
        (op(json!({"notPorts": ["15000"]})), req().port(Some(15000)), false),
        (op(json!({"notPorts": ["15000"]})), req().port(Some(8080)), true),
        (op(json!({"notPorts": ["15000"]})), req().port(None), true),
        // The port is the connection's, not the one written in the Host header.
        (op(json!({"ports": ["9999"]})), req().host("shop.example:9999").port(Some(8080)), false),
    ]);
}

#[test]
fn operation_fields_are_anded_and_operations_ored() {
    let both = op(json!({"methods": ["GET"], "paths": ["/a"], "hosts": ["shop.example"], "ports": ["8080"]}));
    check(&[
        (both.clone(), req().path("/a"), true),
        (both.clone(), req().path("/a").method("POST"), false),
        (both.clone(), req().path("/a").host("other"), false),
        (both.clone(), req().path("/a").port(Some(1)), false),
        (json!({"to": [{"operation": {"paths": ["/a"]}}, {"operation": {"paths": ["/b"]}}]}), req().path("/b"), true),
        (json!({"to": [{"operation": {}}]}), req().path("/anything"), true),
    ]);
}

#[test]
fn request_principals_split_at_the_last_slash() {
    let other_iss = identity(json!({"iss": "https://evil", "sub": "alice-id"}));
    let longer_iss = identity(json!({"iss": format!("{ISS}/extra"), "sub": "x"}));
    let no_sub = identity(json!({"sub": null}));
    let slashed_sub = identity(json!({"sub": "team/alice"}));
    let bare = identity(json!({"iss": "issuer-without-slash", "sub": ""}));
    check(&[
        (src(json!({"requestPrincipals": [format!("{ISS}/alice-id")]})), req(), true),
        (src(json!({"requestPrincipals": [format!("{ISS}/alice-id")]})), req().who(Some(other_iss.clone())), false),
        (src(json!({"requestPrincipals": [format!("{ISS}/*")]})), req(), true),
        (src(json!({"requestPrincipals": [format!("{ISS}/*")]})), req().who(Some(other_iss.clone())), false),
        // Split, not a string prefix: iss ".../shop/extra" with sub "x" is not ".../shop/*".
        (src(json!({"requestPrincipals": [format!("{ISS}/*")]})), req().who(Some(longer_iss.clone())), false),
        (src(json!({"requestPrincipals": [format!("{ISS}/ali*")]})), req(), true),
        (src(json!({"requestPrincipals": [format!("{ISS}/bob*")]})), req(), false),
        (src(json!({"requestPrincipals": ["*/alice-id"]})), req().who(Some(other_iss.clone())), true),
        (src(json!({"requestPrincipals": ["*/realms/shop/alice-id"]})), req(), true),
        (src(json!({"requestPrincipals": ["*/realms/shop/alice-id"]})), req().who(Some(other_iss)), false),
        (src(json!({"requestPrincipals": ["*-id"]})), req(), true),
        (src(json!({"requestPrincipals": ["https://idp/*"]})), req(), false),
        // Without a `/`, a trailing `*` is on the issuer (and any subject).
        (src(json!({"requestPrincipals": ["https:*"]})), req(), true),
        (src(json!({"requestPrincipals": ["https://idp/realms/shop*"]})), req(), false),
        (src(json!({"requestPrincipals": ["issuer-without*"]})), req().who(Some(bare.clone())), false),
        (src(json!({"requestPrincipals": ["issuer-without-slash"]})), req().who(Some(bare)), true),
        (src(json!({"requestPrincipals": ["*"]})), req(), true),
        (src(json!({"requestPrincipals": ["*"]})), req().anonymous(), false),
        (src(json!({"requestPrincipals": ["*"]})), req().who(Some(no_sub.clone())), false),
        (src(json!({"requestPrincipals": [format!("{ISS}/")]})), req().who(Some(no_sub)), false),
        (src(json!({"requestPrincipals": [format!("{ISS}/team/alice")]})), req().who(Some(slashed_sub)), false),
        (src(json!({"notRequestPrincipals": ["*"]})), req().anonymous(), true),
        (src(json!({"notRequestPrincipals": ["*"]})), req(), false),
        (src(json!({"notRequestPrincipals": [format!("{ISS}/bob-id")]})), req(), true),
        (src(json!({"requestPrincipals": ["*"], "notRequestPrincipals": [format!("{ISS}/alice-id")]})), req(), false),
        (
            json!({"from": [{"source": {"requestPrincipals": ["a/b"]}}, {"source": {"requestPrincipals": ["*"]}}]}),
            req(),
            true,
        ),
    ]);
}

#[test]
fn ip_blocks_and_remote_ip_blocks() {
    check(&[
        (src(json!({"ipBlocks": ["10.0.0.0/8"]})), req(), true),
        (src(json!({"ipBlocks": ["10.0.0.5"]})), req(), true),
        (src(json!({"ipBlocks": ["192.168.0.0/16"]})), req(), false),
        (src(json!({"ipBlocks": ["10.0.0.0/8"]})), req().source(None), false),
        (src(json!({"notIpBlocks": ["10.0.0.0/8"]})), req(), false),
        (src(json!({"notIpBlocks": ["10.0.0.0/8"]})), req().source(None), true),
        (src(json!({"ipBlocks": ["2001:db8::/32"]})), req().source(Some("2001:db8::9")), true),
        (src(json!({"remoteIpBlocks": ["203.0.113.0/24"]})), req(), true),
        (src(json!({"remoteIpBlocks": ["10.0.0.0/8"]})), req(), false),
        (src(json!({"notRemoteIpBlocks": ["203.0.113.7"]})), req(), false),
        (src(json!({"notRemoteIpBlocks": ["203.0.113.7"]})), req().remote(Some("198.51.100.1")), true),
        (src(json!({"remoteIpBlocks": ["0.0.0.0/0"]})), req().remote(None), false),
        (src(json!({"ipBlocks": ["10.0.0.0/8"], "remoteIpBlocks": ["203.0.113.0/24"]})), req(), true),
        (
            src(json!({"ipBlocks": ["10.0.0.0/8"], "remoteIpBlocks": ["203.0.113.0/24"]})),
            req().remote(Some("1.1.1.1")),
            false,
        ),
    ]);
}

#[test]
fn when_keys() {
    let multi_aud = identity(json!({"aud": "shop", "azp": ["shop-web", "cli"]}));
    check(&[
        (when("request.auth.claims[realm_access][roles]", json!(["admin"])), req(), true),
        (when("request.auth.claims[realm_access][roles]", json!(["root"])), req(), false),
        (when("request.auth.claims[realm_access.roles]", json!(["admin"])), req(), true),
        (when("request.auth.claims[resource_access][shop-backend][roles]", json!(["reader"])), req(), true),
        (when("request.auth.claims[scope]", json!(["email"])), req(), true),
        (when("request.auth.claims[scope]", json!(["openid profile email"])), req(), false),
        (when("request.auth.claims[permission]", json!(["orders:write"])), req(), true),
        (when("request.auth.claims[entitlements]", json!(["gold"])), req(), false),
        (when("request.auth.claims[preferred_username]", json!(["alice"])), req(), true),
        (when("request.auth.claims[preferred_username]", json!(["ali*"])), req(), true),
        (when("request.auth.claims[preferred_username]", json!(["*ice"])), req(), true),
        (when("request.auth.claims[preferred_username]", json!(["*"])), req(), true),
        (when("request.auth.claims[preferred_username]", json!(["bob"])), req(), false),
        (when("request.auth.claims[email_verified]", json!(["true"])), req(), true),
        (when("request.auth.claims[email_verified]", json!(["false"])), req(), false),
        (when("request.auth.claims[level]", json!(["3"])), req(), true),
        (when("request.auth.claims[level]", json!(["3.0"])), req(), false),
        (when("request.auth.claims[missing]", json!(["*"])), req(), false),
        (when("request.auth.claims[realm_access]", json!(["*"])), req(), false),
        (when("request.auth.claims[https://example.com/group]", json!(["staff"])), req(), true),
        (when("request.auth.claims[iss]", json!([ISS])), req(), true),
        (when("request.auth.claims[realm_access][roles]", json!(["*"])), req().anonymous(), false),
        (when_not("request.auth.claims[realm_access][roles]", json!(["admin"])), req(), false),
        (when_not("request.auth.claims[realm_access][roles]", json!(["admin"])), req().anonymous(), true),
        (when("request.auth.presenter", json!(["shop-web"])), req(), true),
        (when("request.auth.presenter", json!(["cli"])), req().who(Some(multi_aud.clone())), true),
        (when("request.auth.presenter", json!(["*"])), req().anonymous(), false),
        (when("request.auth.audiences", json!(["shop"])), req(), true),
        (when("request.auth.audiences", json!(["acc*"])), req(), true),
        (when("request.auth.audiences", json!(["shop"])), req().who(Some(multi_aud)), true),
        (when("request.auth.audiences", json!(["other"])), req(), false),
        (when("request.auth.principal", json!([format!("{ISS}/alice-id")])), req(), true),
        (when("request.auth.principal", json!([format!("{ISS}/*")])), req(), true),
        (when_not("request.auth.principal", json!([format!("{ISS}/alice-id")])), req(), false),
        (when("request.headers[X-Env]", json!(["prod"])), req(), true),
        (when("request.headers[x-env]", json!(["dev"])), req(), false),
        (when("request.headers[x-env]", json!(["pr*"])), req(), true),
        (when("request.headers[x-missing]", json!(["*"])), req(), false),
        (when_not("request.headers[x-missing]", json!(["*"])), req(), true),
        // A header's `*` is presence (Istio's present_match): an empty value is present.
        (when("request.headers[x-debug]", json!(["*"])), req().header("x-debug", ""), true),
        (when_not("request.headers[x-debug]", json!(["*"])), req().header("x-debug", ""), false),
        (when("request.headers[x-debug]", json!(["de*"])), req().header("x-debug", ""), false),
        // Elsewhere `*` stays non-empty (`.+`), as Istio translates it.
        (when("request.auth.claims[empty]", json!(["*"])), req().who(Some(identity(json!({"empty": ""})))), false),
        // Every occurrence and every comma-separated element counts (no DENY sidestep).
        (
            when("request.headers[x-role]", json!(["admin"])),
            req().header("x-role", "user").header("x-role", "admin"),
            true,
        ),
        (when("request.headers[x-role]", json!(["admin"])), req().header("x-role", "user, admin"), true),
        (when("request.headers[x-role]", json!(["user, admin"])), req().header("x-role", "user, admin"), true),
        (when_not("request.headers[x-role]", json!(["admin"])), req().header("x-role", "user,admin"), false),
        (when("source.ip", json!(["10.0.0.0/8"])), req(), true),
        (when("source.ip", json!(["10.0.0.6"])), req(), false),
        (when_not("source.ip", json!(["10.0.0.5"])), req(), false),
        (when("source.ip", json!(["10.0.0.0/8"])), req().source(None), false),
        (when("remote.ip", json!(["203.0.113.0/24", "198.51.100.0/24"])), req(), true),
        (when("remote.ip", json!(["10.0.0.0/8"])), req(), false),
        (when_not("remote.ip", json!(["203.0.113.7"])), req(), false),
        (when("destination.port", json!(["8080"])), req(), true),
        (when("destination.port", json!(["80"])), req(), false),
        (when_not("destination.port", json!(["8080"])), req(), false),
        (when("destination.port", json!(["8080"])), req().port(None), false),
        (
            json!({"when": [{"key": "request.headers[x-env]", "values": ["prod", "dev"], "notValues": ["dev"]}]}),
            req(),
            true,
        ),
        (json!({"when": [{"key": "request.headers[x-env]", "values": ["prod"], "notValues": ["pr*"]}]}), req(), false),
    ]);
}

#[test]
fn every_when_must_match_and_one_from_and_one_to() {
    let rule = json!({
        "from": [{"source": {"requestPrincipals": ["*"]}}],
        "to": [{"operation": {"paths": ["/admin/*"]}}],
        "when": [
            {"key": "request.auth.claims[realm_access][roles]", "values": ["admin"]},
            {"key": "request.headers[x-env]", "values": ["prod"]}
        ]
    });
    check(&[
        (rule.clone(), req().path("/admin/x"), true),
        (rule.clone(), req().path("/admin/x").anonymous(), false),
        (rule.clone(), req().path("/shop"), false),
        (rule.clone(), Req { headers: vec![], ..req().path("/admin/x") }, false),
        (rule, req().path("/admin/x").who(Some(identity(json!({"realm_access": {"roles": ["user"]}})))), false),
    ]);
}

#[test]
fn configured_space_delimited_claims_add_to_the_defaults() {
    let p = policies(json!({"spaceDelimitedClaims": ["entitlements"], "policies": [{"rules": [
        {"when": [{"key": "request.auth.claims[entitlements]", "values": ["gold"]},
                  {"key": "request.auth.claims[scope]", "values": ["email"]}]}
    ]}]}));
    assert!(allowed(&p, &req()));
    assert_eq!(p.space_delimited_claims, vec!["scope", "permission", "entitlements"]);
    // Nested: the innermost name decides.
    let nested = policies(json!({"spaceDelimitedClaims": ["grants"], "policies": [{"rules": [
        {"when": [{"key": "request.auth.claims[ext][grants]", "values": ["b"]}]}
    ]}]}));
    assert!(allowed(&nested, &req().who(Some(identity(json!({"ext": {"grants": "a b c"}}))))));
}

#[test]
fn deny_first_then_allow_semantics() {
    let p = policies(json!({"policies": [
        {"name": "deny-debug", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/debug*"]}}]}]},
        {"name": "shop", "action": "ALLOW", "rules": [
            {"to": [{"operation": {"paths": ["/healthz"], "methods": ["GET"]}}]},
            {"from": [{"source": {"requestPrincipals": ["*"]}}], "to": [{"operation": {"paths": ["/debug/*", "/api/*"]}}]}
        ]}
    ]}));
    assert!(allowed(&p, &req().path("/healthz").anonymous()));
    assert!(!allowed(&p, &req().path("/healthz").method("POST").anonymous()));
    assert!(!allowed(&p, &req().path("/api/x").anonymous()));
    assert!(allowed(&p, &req().path("/api/x")));
    assert_eq!(decide(&p, &req().path("/debug/x")), PolicyDecision::Deny { policy: Some("deny-debug".into()) });
    assert_eq!(decide(&p, &req().path("/other")), PolicyDecision::Deny { policy: None });
}

#[test]
fn empty_rules_unset_rules_and_missing_policies() {
    let r = req().path("/x").anonymous();
    let only_deny = policies(
        json!({"policies": [{"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}]}),
    );
    assert!(allowed(&only_deny, &r));
    assert!(!allowed(&only_deny, &r.clone().method("DELETE")));
    // ALLOW without rules: allow-nothing.
    assert!(!allowed(&policies(json!({"policies": [{"name": "none", "action": "ALLOW"}]})), &r));
    assert!(!allowed(&policies(json!({"policies": [{"name": "none", "rules": []}]})), &r));
    // A rule {} matches everything: allow-all, or with DENY deny-all.
    assert!(allowed(&policies(json!({"policies": [{"name": "all", "action": "ALLOW", "rules": [{}]}]})), &r));
    assert!(!allowed(&policies(json!({"policies": [{"action": "DENY", "rules": [{}]}]})), &r));
    // DENY without rules denies nothing.
    assert!(allowed(&policies(json!({"policies": [{"action": "DENY"}]})), &r));
    // AUDIT policies alone decide nothing: everything is allowed.
    assert!(allowed(&policies(json!({"policies": [{"action": "AUDIT", "rules": [{}]}]})), &r));
    // An ALLOW matching anywhere among several ALLOW policies is enough.
    let two = policies(json!({"policies": [
        {"name": "a", "rules": [{"to": [{"operation": {"paths": ["/a"]}}]}]},
        {"name": "b", "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]}
    ]}));
    assert!(allowed(&two, &r));
}

#[test]
fn audit_policies_are_reported_and_change_nothing() {
    let p = policies(json!({"policies": [
        {"name": "audit-admin", "action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}]},
        {"name": "audit-all-deletes", "action": "AUDIT", "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]},
        {"name": "deny-delete", "action": "DENY", "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}
    ]}));
    let audited = |policy: &str| PolicyNote::Audited { policy: policy.into() };
    let e = evaluate(&p, &req().path("/admin/x"));
    assert_eq!((e.decision, e.notes), (PolicyDecision::Allow, vec![audited("audit-admin")]));
    let e = evaluate(&p, &req().path("/admin/x").method("DELETE"));
    assert_eq!(e.decision, PolicyDecision::Deny { policy: Some("deny-delete".into()) });
    assert_eq!(e.notes, vec![audited("audit-admin"), audited("audit-all-deletes")]);
    assert_eq!(evaluate(&p, &req().path("/shop")).notes, vec![]);
}

#[test]
fn dry_run_policies_are_reported_not_enforced() {
    let p = policies(json!({"policies": [
        {"name": "try-deny-debug", "action": "DENY", "dryRun": true, "rules": [{"to": [{"operation": {"paths": ["/debug/*"]}}]}]},
        {"name": "deny-secret", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/secret"]}}]}]},
        {"name": "try-only-api", "action": "ALLOW", "dryRun": true, "rules": [{"to": [{"operation": {"paths": ["/api/*"]}}]}]}
    ]}));
    // No enforced ALLOW policy: everything not denied is allowed; the dry-run ones would change that.
    let e = evaluate(&p, &req().path("/debug/x"));
    assert_eq!(e.decision, PolicyDecision::Allow);
    assert_eq!(e.notes, vec![PolicyNote::DryRunWouldDeny { policy: Some("try-deny-debug".into()) }]);
    let e = evaluate(&p, &req().path("/shop"));
    assert_eq!(e.decision, PolicyDecision::Allow);
    assert_eq!(e.notes, vec![PolicyNote::DryRunWouldDeny { policy: None }]);
    let e = evaluate(&p, &req().path("/api/x"));
    assert_eq!((e.decision, e.notes), (PolicyDecision::Allow, vec![]));
    // Enforced denials stay denials; a dry-run policy cannot lift them, so nothing to report.
    let e = evaluate(&p, &req().path("/secret"));
    assert_eq!((e.decision, e.notes), (PolicyDecision::Deny { policy: Some("deny-secret".into()) }, vec![]));

    let allow = policies(json!({"policies": [
        {"name": "only-shop", "rules": [{"to": [{"operation": {"paths": ["/shop"]}}]}]},
        {"name": "try-also-api", "dryRun": true, "rules": [{"to": [{"operation": {"paths": ["/api/*"]}}]}]}
    ]}));
    let e = evaluate(&allow, &req().path("/api/x"));
    assert_eq!(e.decision, PolicyDecision::Deny { policy: None });
    assert_eq!(e.notes, vec![PolicyNote::DryRunWouldAllow { policy: "try-also-api".into() }]);
    assert_eq!(evaluate(&allow, &req().path("/shop")).notes, vec![]);
}

#[test]
fn token_requirement_matchers_are_operations() {
    let config = crate::config::Config::parse(
        json!({"jwtRules": [{"issuer": ISS, "jwksUri": "https://idp/certs"}],
               "tokenRequirements": [{"match": {"paths": ["/healthz"], "methods": ["GET"]}, "skipValidation": true}]})
        .to_string()
        .as_bytes(),
    )
    .expect("valid");
    let matcher = &config.token_requirements[0].matcher;
    let input = |r: &Req| MatchInput {
        path: r.path,
        method: r.method,
        host: r.host,
        port: r.port,
        source_ip: None,
        remote_ip: None,
        peer: None,
        sni: None,
        destination_ip: None,
        headers: &[],
        identity: None,
    };
    assert!(matcher.matches_request(&input(&req().path("/healthz"))));
    assert!(!matcher.matches_request(&input(&req().path("/healthz").method("POST"))));
    assert!(!matcher.matches_request(&input(&req().path("/healthz/x"))));
}
