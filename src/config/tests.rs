//! Unit tests of configuration compiling: every field, its defaults, and every refusal with its path.

use super::*;
use crate::authn::extract::LocationId;
use crate::authz::RequirementAction;
use crate::ids::ProviderId;
use crate::keys::{
    KeySource, DEFAULT_CACHE_DURATION_MS, DEFAULT_FETCH_TIMEOUT_MS, DEFAULT_STALE_IF_ERROR_MS,
    DEFAULT_UNKNOWN_KID_REFETCH_INTERVAL_MS, DISCOVERY_PATH,
};
use serde_json::{json, Value};

fn error(config: serde_json::Value) -> ConfigError {
    Config::parse(config.to_string().as_bytes()).expect_err("config must be refused")
}

#[test]
fn connection_attributes_are_read_only_where_a_rule_needs_them() {
    let reads = |policies: serde_json::Value, requirements: serde_json::Value| {
        let config = json!({"policies": policies, "tokenRequirements": requirements,
                            "connectionManager": {"useRemoteAddress": true}});
        Config::parse(config.to_string().as_bytes()).expect("valid").connection_reads
    };
    let neither = ConnectionReads::default();
    let port = ConnectionReads { destination_port: true, ..ConnectionReads::default() };
    let address = ConnectionReads { source_address: true, ..ConnectionReads::default() };
    let rule = |rule: serde_json::Value| json!([{"rules": [rule]}]);
    let when = |key: &str, value: &str| rule(json!({"when": [{"key": key, "values": [value]}]}));
    let cases = [
        (json!([{"rules": [{}]}]), json!([]), neither),
        (
            rule(json!({"to": [{"operation": {"paths": ["/a"], "hosts": ["x"], "methods": ["GET"]}}]})),
            json!([]),
            neither,
        ),
        (when("request.headers[x]", "1"), json!([]), neither),
        (rule(json!({"to": [{"operation": {"ports": ["8080"]}}]})), json!([]), port),
        (rule(json!({"to": [{"operation": {"notPorts": ["15000"]}}]})), json!([]), port),
        (when("destination.port", "8080"), json!([]), port),
        (json!([{"rules": [{}]}]), json!([{"match": {"ports": ["8443"]}, "skipValidation": true}]), port),
        (rule(json!({"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]})), json!([]), address),
        (rule(json!({"from": [{"source": {"notRemoteIpBlocks": ["10.0.0.0/8"]}}]})), json!([]), address),
        (when("source.ip", "10.0.0.1"), json!([]), address),
        (when("remote.ip", "10.0.0.1"), json!([]), address),
        (
            json!([{"action": "AUDIT", "rules": [{"from": [{"source": {"remoteIpBlocks": ["1.2.3.4"]}}],
                                                  "to": [{"operation": {"ports": ["80"]}}]}]}]),
            json!([]),
            ConnectionReads { destination_port: true, source_address: true, ..ConnectionReads::default() },
        ),
    ];
    for (policies, requirements, expected) in cases {
        assert_eq!(reads(policies.clone(), requirements.clone()), expected, "{policies} {requirements}");
    }
}

#[test]
fn the_issue_example_compiles_with_istio_defaults() {
    let config = Config::parse(include_bytes!("../../examples/envoy/plugin-config.json")).expect("valid");
    let provider = &config.issuers.providers[0];
    assert_eq!(provider.audiences, vec!["shop".to_string()]);
    assert!(!provider.forward_original_token);
    // Istio's two, and the DPoP scheme (`dpop: optional`, the default) beside the bearer one.
    assert_eq!(provider.locations, vec![LocationId(0), LocationId(1), LocationId(2)]);
    assert_eq!(
        config.issuers.locations,
        vec![
            TokenLocation::header("Authorization", "Bearer "),
            TokenLocation::Param("access_token".into()),
            TokenLocation::header("Authorization", "DPoP "),
        ]
    );
    assert_eq!(provider.dpop, crate::authn::dpop::DpopMode::Optional);
    assert_eq!(config.output_headers, vec!["x-jwt-payload".to_string(), "x-user".to_string()]);
    assert_eq!((config.policies.deny.len(), config.policies.allow.len()), (1, 1));
    let KeySource::Remote(remote) = &provider.keys else { panic!("remote keys") };
    assert_eq!(remote.cluster, "keycloak");
    assert_eq!(remote.authority, "127.0.0.1:8180");
    assert_eq!(remote.path, "/realms/shop/protocol/openid-connect/certs");
    assert_eq!(remote.timeout_ms, DEFAULT_FETCH_TIMEOUT_MS);
}

#[test]
fn default_cluster_is_istios_outbound_name() {
    for (uri, cluster, authority) in [
        ("https://idp.example/realms/a/certs", "outbound|443||idp.example", "idp.example"),
        (
            "http://keycloak.auth.svc.cluster.local:8080/c",
            "outbound|8080||keycloak.auth.svc.cluster.local",
            "keycloak.auth.svc.cluster.local:8080",
        ),
        ("http://[::1]:9000/c", "outbound|9000||::1", "[::1]:9000"),
    ] {
        let config =
            Config::parse(json!({"jwtRules": [{"issuer": "i", "jwksUri": uri}]}).to_string().as_bytes()).expect(uri);
        let KeySource::Remote(remote) = &config.issuers.providers[0].keys else { panic!("remote") };
        assert_eq!((remote.cluster.as_str(), remote.authority.as_str()), (cluster, authority));
    }
}

#[test]
fn cache_settings_default_and_parse() {
    let parse = |rule: serde_json::Value| {
        let config = Config::parse(json!({"jwtRules": [rule]}).to_string().as_bytes()).expect("valid");
        let KeySource::Remote(remote) = &config.issuers.providers[0].keys else { panic!("remote") };
        remote.clone()
    };
    let defaults = parse(json!({"issuer": "i", "jwksUri": "http://x/c"}));
    assert_eq!(
        (defaults.cache_duration_ms, defaults.stale_if_error_ms, defaults.unknown_kid_refetch_interval_ms),
        (DEFAULT_CACHE_DURATION_MS, DEFAULT_STALE_IF_ERROR_MS, DEFAULT_UNKNOWN_KID_REFETCH_INTERVAL_MS)
    );
    assert_eq!((defaults.discovery, defaults.cluster_override), (false, None));
    let given = parse(json!({"issuer": "i", "jwksUri": "http://x/c", "cacheDuration": "1s",
                             "staleIfError": "0s", "unknownKidRefetchInterval": "2m", "timeout": "250ms"}));
    assert_eq!(
        (given.cache_duration_ms, given.stale_if_error_ms, given.unknown_kid_refetch_interval_ms, given.timeout_ms),
        (1_000, 0, 120_000, 250)
    );
}

#[test]
fn without_jwks_uri_the_issuer_is_discovered() {
    for (issuer, cluster, expected_cluster, authority, path) in [
        (
            "https://idp.example/realms/shop",
            None,
            "outbound|443||idp.example",
            "idp.example",
            "/realms/shop/.well-known/openid-configuration",
        ),
        (
            "http://127.0.0.1:8180/realms/shop/",
            Some("idp"),
            "idp",
            "127.0.0.1:8180",
            "/realms/shop/.well-known/openid-configuration",
        ),
        (
            "https://accounts.example",
            None,
            "outbound|443||accounts.example",
            "accounts.example",
            "/.well-known/openid-configuration",
        ),
    ] {
        let mut rule = json!({"issuer": issuer});
        if let Some(cluster) = cluster {
            rule["jwksCluster"] = json!(cluster);
        }
        let config = Config::parse(json!({"jwtRules": [rule]}).to_string().as_bytes()).expect(issuer);
        let KeySource::Remote(remote) = &config.issuers.providers[0].keys else { panic!("remote") };
        assert!(remote.discovery);
        assert_eq!(remote.uri, format!("{}{DISCOVERY_PATH}", issuer.trim_end_matches('/')));
        assert_eq!(
            (remote.cluster.as_str(), remote.authority.as_str(), remote.path.as_str()),
            (expected_cluster, authority, path)
        );
        assert_eq!(remote.cluster_override.as_deref(), cluster);
    }
}

#[test]
fn explicit_locations_replace_the_defaults_and_are_shared() {
    let config = Config::parse(
        json!({"jwtRules": [
            {"issuer": "a", "jwksUri": "http://a/c", "fromCookies": ["session"], "fromHeaders": [{"name": "X-Token"}]},
            {"issuer": "b", "jwksUri": "http://b/c", "fromHeaders": [{"name": "x-token", "prefix": ""}]}
        ]})
        .to_string()
        .as_bytes(),
    )
    .expect("valid");
    assert_eq!(
        config.issuers.locations,
        vec![TokenLocation::header("x-token", ""), TokenLocation::Cookie("session".into())]
    );
    assert_eq!(config.issuers.providers[0].locations, vec![LocationId(0), LocationId(1)]);
    assert_eq!(config.issuers.providers[1].locations, vec![LocationId(0)]);
}

#[test]
fn errors_name_the_field_and_the_reason() {
    let cases = [
        (json!({"jwtRules": [{"issuer": "", "jwksUri": "http://x/certs"}]}), "jwtRules[0].issuer", "must not be empty"),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "bogus": 1}]}),
            "jwtRules[0].bogus",
            "unknown field `bogus`",
        ),
        (json!({"jwtRules": [{"issuer": "i"}]}), "jwtRules[0].jwksUri", "required"),
        (json!({"jwtRules": [{"issuer": "i", "jwksUri": "ftp://x/c"}]}), "jwtRules[0].jwksUri", "not an absolute http"),
        (json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "jwks": "{}"}]}), "jwtRules[0].jwks", "not both"),
        (json!({"jwtRules": [{"issuer": "i", "jwks": "{\"keys\": []}"}]}), "jwtRules[0].jwks", "no keys"),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "timeout": "soon"}]}),
            "jwtRules[0].timeout",
            "not a duration such as",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "timeout": "0s"}]}),
            "jwtRules[0].timeout",
            "must be positive",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "cacheDuration": "500ms"}]}),
            "jwtRules[0].cacheDuration",
            "too short: must be at least 1s",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "cacheDuration": "25h"}]}),
            "jwtRules[0].cacheDuration",
            "too long: at most 24h",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "cacheDuration": 300}]}),
            "jwtRules[0].cacheDuration",
            "invalid type",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "staleIfError": "169h"}]}),
            "jwtRules[0].staleIfError",
            "too long: at most 168h",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "staleIfError": "-1s"}]}),
            "jwtRules[0].staleIfError",
            "not a duration",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "unknownKidRefetchInterval": "100ms"}]}),
            "jwtRules[0].unknownKidRefetchInterval",
            "at least 1s",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwks": "{}", "cacheDuration": "1m"}]}),
            "jwtRules[0].cacheDuration",
            "not with inline jwks",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwks": "{}", "jwksCluster": "c"}]}),
            "jwtRules[0].jwksCluster",
            "not with inline jwks",
        ),
        (
            json!({"jwtRules": [{"issuer": "https://idp.example/realms/a", "jwksCluster": " "}]}),
            "jwtRules[0].jwksCluster",
            "must not be empty",
        ),
        (
            json!({"jwtRules": [{"issuer": "https://idp example/realms/a"}]}),
            "jwtRules[0].jwksUri",
            "is not an http(s) URL, so its OIDC discovery document cannot be read",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "audiences": ["a", ""]}]}),
            "jwtRules[0].audiences[1]",
            "must not be empty",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "outputClaimToHeaders": [{"header": "bad header", "claim": "sub"}]}]}),
            "jwtRules[0].outputClaimToHeaders[0].header",
            "not a valid HTTP header name",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c"}, {"issuer": "i", "jwksUri": "http://y/c"}]}),
            "jwtRules[1].issuer",
            "configured twice",
        ),
        (json!({"jwtRules": [{"issuer": 5, "jwksUri": "http://x/c"}]}), "jwtRules[0].issuer", "invalid type"),
        (
            json!({"policies": [{"name": "p", "action": "MAYBE"}]}),
            "policies[0].action",
            "expected ALLOW, DENY or AUDIT",
        ),
        (json!({"policies": [{"action": "CUSTOM"}]}), "policies[0].action", "CUSTOM (external authorization)"),
        (json!({"policies": [{"action": "AUDIT", "dryRun": true}]}), "policies[0].dryRun", "AUDIT"),
        (json!({"policies": [{"dryRun": "yes"}]}), "policies[0].dryRun", "invalid type"),
        (json!({"policies": [{"rules": [{"bogus": 1}]}]}), "policies[0].rules[0].bogus", "unknown field `bogus`"),
        (
            json!({"policies": [{"rules": [{"to": [{"operation": {"paths": ["/a/*/b"]}}]}]}]}),
            "policies[0].rules[0].to[0].operation.paths[0]",
            "only allowed",
        ),
        (
            json!({"policies": [{"rules": [{"to": [{"operation": {"paths": ["*a*"]}}]}]}]}),
            "policies[0].rules[0].to[0].operation.paths[0]",
            "only allowed",
        ),
        (
            json!({"policies": [{"rules": [{"to": [{"operation": {"paths": ["/ok", "/a/{id}"]}}]}]}]}),
            "policies[0].rules[0].to[0].operation.paths[1]",
            "only {*} and {**} are supported",
        ),
        (
            json!({"policies": [{"rules": [{"to": [{"operation": {"notPaths": ["/a/{**}/{*}"]}}]}]}]}),
            "policies[0].rules[0].to[0].operation.notPaths[0]",
            "{**} must be the last operator",
        ),
        (
            json!({"policies": [{"rules": [{"to": [{"operation": {"paths": ["/a/{*"]}}]}]}]}),
            "policies[0].rules[0].to[0].operation.paths[0]",
            "not allowed in a path template",
        ),
        (
            json!({"policies": [{"rules": [{"to": [{"operation": {"hosts": ["*.a.*"]}}]}]}]}),
            "policies[0].rules[0].to[0].operation.hosts[0]",
            "only allowed",
        ),
        (
            json!({"policies": [{"rules": [{"to": [{"operation": {"notHosts": [""]}}]}]}]}),
            "policies[0].rules[0].to[0].operation.notHosts[0]",
            "must not be empty",
        ),
        (
            json!({"policies": [{"rules": [{"to": [{"operation": {"ports": ["80", "http"]}}]}]}]}),
            "policies[0].rules[0].to[0].operation.ports[1]",
            "\"http\" is not a port number",
        ),
        (
            json!({"policies": [{"rules": [{"to": [{"operation": {"notPorts": [70000]}}]}]}]}),
            "policies[0].rules[0].to[0].operation.notPorts[0]",
            "70000 is not a port number",
        ),
        (
            json!({"policies": [{"rules": [{"to": [{"operation": {"methods": ["G*T"]}}]}]}]}),
            "policies[0].rules[0].to[0].operation.methods[0]",
            "only allowed",
        ),
        (
            json!({"policies": [{"rules": [{"to": [{"operation": {"hostz": ["a"]}}]}]}]}),
            "policies[0].rules[0].to[0].operation.hostz",
            "unknown field `hostz`",
        ),
        (
            json!({"policies": [{"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8", "10.0.0.0/40"]}}]}]}]}),
            "policies[0].rules[0].from[0].source.ipBlocks[1]",
            "prefix length",
        ),
        (
            json!({"policies": [{"rules": [{"from": [{"source": {"notRemoteIpBlocks": ["office"]}}]}]}]}),
            "policies[0].rules[0].from[0].source.notRemoteIpBlocks[0]",
            "not an IP address or CIDR block",
        ),
        (
            json!({"policies": [{"rules": [{"from": [{"source": {"principals": ["cluster.local/*/sa/b"]}}]}]}]}),
            "policies[0].rules[0].from[0].source.principals[0]",
            "only allowed",
        ),
        (
            json!({"policies": [{"rules": [{"from": [{"source": {"namespaces": ["a", "Shop_1"]}}]}]}]}),
            "policies[0].rules[0].from[0].source.namespaces[1]",
            "not a Kubernetes namespace",
        ),
        (
            json!({"policies": [{"rules": [{"from": [{"source": {"serviceAccounts": ["cart"]}}]}]}]}),
            "policies[0].rules[0].from[0].source.serviceAccounts[0]",
            "namespace/name",
        ),
        (
            json!({"policies": [{"action": "DENY"}], "trustDomainAliases": ["old/td"]}),
            "trustDomainAliases[0]",
            "not a trust domain",
        ),
        (
            json!({"policies": [{"rules": [{"from": [{"source": {"requestPrincipals": ["/alice"]}}]}]}]}),
            "policies[0].rules[0].from[0].source.requestPrincipals[0]",
            "the issuer (before the last /) is empty",
        ),
        (
            json!({"policies": [{"rules": [{"from": [{"source": {"notRequestPrincipals": ["a*b/c"]}}]}]}]}),
            "policies[0].rules[0].from[0].source.notRequestPrincipals[0]",
            "only allowed",
        ),
        (
            json!({"policies": [{"rules": [{"when": [{"key": "source.principal", "values": ["x", "a*b"]}]}]}]}),
            "policies[0].rules[0].when[0].values[1]",
            "only allowed",
        ),
        (
            json!({"policies": [{"rules": [{"when": [{"key": "request.auth.claim[a]", "values": ["x"]}]}]}]}),
            "policies[0].rules[0].when[0].key",
            "unsupported key",
        ),
        (
            json!({"policies": [{"rules": [{"when": [{"key": "remote.ip", "values": ["1.2.3.4", "1.2.3"]}]}]}]}),
            "policies[0].rules[0].when[0].values[1]",
            "not an IP address",
        ),
        (
            json!({"policies": [{"rules": [{"when": [{"key": "source.ip", "notValues": ["::/200"]}]}]}]}),
            "policies[0].rules[0].when[0].notValues[0]",
            "prefix length",
        ),
        (
            json!({"policies": [{"rules": [{"when": [{"key": "destination.port", "values": ["https"]}]}]}]}),
            "policies[0].rules[0].when[0].values[0]",
            "not a port number",
        ),
        (
            json!({"policies": [{"rules": [{"when": [{"key": "request.auth.principal", "values": ["/sub"]}]}]}]}),
            "policies[0].rules[0].when[0].values[0]",
            "issuer",
        ),
        (
            json!({"policies": [{"rules": [{"when": [{"key": "request.headers[]", "values": ["x"]}]}]}]}),
            "policies[0].rules[0].when[0].key",
            "expected request.headers[name]",
        ),
        (json!({"policies": [], "numTrustedProxies": -1}), "numTrustedProxies", "invalid value"),
        (
            json!({"policies": [{"action": "DENY"}], "unsafePaths": "ALLOW"}),
            "unsafePaths",
            "expected REJECT (400) or DENY (403)",
        ),
        (
            json!({"policies": [{"action": "DENY"}], "corsPreflight": "bypass"}),
            "corsPreflight",
            "expected BYPASS (Istio's default: preflights need no token) or AUTHENTICATE",
        ),
        (
            json!({"policies": [{"action": "DENY"}], "signatureBackend": "host"}),
            "signatureBackend",
            "expected \"auto\"",
        ),
        (
            json!({"policies": [{"action": "DENY"}], "spaceDelimitedClaims": ["roles", ""]}),
            "spaceDelimitedClaims[1]",
            "must not be empty",
        ),
        (
            json!({"policies": [{"action": "DENY"}], "spaceDelimitedClaims": ["a[b]"]}),
            "spaceDelimitedClaims[0]",
            "innermost",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c"}],
                   "tokenRequirements": [{"match": {"paths": ["/a"]}, "issuers": ["i", "j"]}]}),
            "tokenRequirements[0].issuers[1]",
            "\"j\" is not the issuer of any jwtRules entry",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c"}],
                   "tokenRequirements": [{"match": {"paths": ["/a"]}, "issuers": [""]}]}),
            "tokenRequirements[0].issuers[0]",
            "must not be empty",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c"}],
                   "tokenRequirements": [{"match": {"paths": ["/a"]}}]}),
            "tokenRequirements[0]",
            "give skipValidation: true",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c"}],
                   "tokenRequirements": [{"match": {"paths": ["/a"]}, "skipValidation": true, "issuers": ["i"]}]}),
            "tokenRequirements[0].issuers",
            "not both",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c"}],
                   "tokenRequirements": [{"match": {"paths": ["/a/{x}"]}, "skipValidation": true}]}),
            "tokenRequirements[0].match.paths[0]",
            "only {*} and {**}",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c"}],
                   "tokenRequirements": [{"skipValidation": true}]}),
            "tokenRequirements[0]",
            "missing field `match`",
        ),
        (
            json!({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c"}],
                   "tokenRequirements": [{"match": {}, "skip": true}]}),
            "tokenRequirements[0].skip",
            "unknown field `skip`",
        ),
        (
            json!({"policies": [{"rules": [{"when": [{"key": "request.auth.claims[a", "values": ["x"]}]}]}]}),
            "policies[0].rules[0].when[0].key",
            "expected request.auth.claims",
        ),
        (
            json!({"policies": [{"rules": [{"when": [{"key": "request.auth.claims[a]"}]}]}]}),
            "policies[0].rules[0].when[0]",
            "at least one of values",
        ),
        (
            json!({"policies": [{"rules": [{"from": [{"source": {"requestPrincipals": [""]}}]}]}]}),
            "policies[0].rules[0].from[0].source.requestPrincipals[0]",
            "must not be empty",
        ),
        (json!({}), "", "neither jwtRules nor policies"),
    ];
    for (config, field, reason) in cases {
        let err = error(config.clone());
        assert_eq!(err.field, field, "{config}: {err}");
        assert!(err.reason.contains(reason), "{config}: {err}");
        assert!(err.to_string().contains(field), "{err}");
    }
    assert_eq!(Config::parse(b"  ").unwrap_err().reason, "the plugin configuration is empty");
    let not_json = Config::parse(b"{not json").unwrap_err();
    assert_eq!(not_json.field, "");
    assert!(not_json.to_string().starts_with("invalid jwt-authz configuration: key must be a string"), "{not_json}");
}

#[test]
fn policy_level_settings_and_their_defaults() {
    let defaults = Config::parse(json!({"policies": [{"action": "DENY"}]}).to_string().as_bytes()).expect("valid");
    assert!(!defaults.peer_is_source_address);
    assert_eq!(defaults.unsafe_paths, UnsafePathAction::Reject);
    assert!(defaults.token_requirements.is_empty());
    assert_eq!(defaults.policies.space_delimited_claims, vec!["scope", "permission"]);
    let config = Config::parse(
        json!({
            "jwtRules": [{"issuer": "a", "jwksUri": "http://a/c"}, {"issuer": "b", "jwksUri": "http://b/c"}],
            "connectionManager": {"useRemoteAddress": true},
            "unsafePaths": "DENY",
            "spaceDelimitedClaims": ["roles", "scope"],
            "tokenRequirements": [
                {"name": "probes", "match": {"paths": ["/healthz"]}, "skipValidation": true},
                {"match": {"paths": ["/b/{**}"]}, "issuers": ["b", "b"]}
            ],
            "policies": [
                {"name": "d", "action": "DENY", "dryRun": true},
                {"name": "a", "action": "AUDIT", "rules": [{}]},
                {"action": "ALLOW", "rules": [{}]}
            ]
        })
        .to_string()
        .as_bytes(),
    )
    .expect("valid");
    assert_eq!((config.peer_is_source_address, config.unsafe_paths), (true, UnsafePathAction::Deny));
    assert_eq!(config.policies.space_delimited_claims, vec!["scope", "permission", "roles"]);
    let names: Vec<&str> = config.token_requirements.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["probes", "tokenRequirements[1]"]);
    assert_eq!(config.token_requirements[0].action, RequirementAction::SkipValidation);
    assert_eq!(config.token_requirements[1].action, RequirementAction::RequireIssuers(vec![ProviderId(1)]));
    let policies = &config.policies;
    assert_eq!((policies.deny.len(), policies.audit.len(), policies.allow.len()), (1, 1, 1));
    assert!(policies.deny[0].dry_run && !policies.allow[0].dry_run);
    assert_eq!(policies.allow[0].name, "policies[2]");
}

/// The first JSON block of a document.
fn first_json_example(document: &str) -> &str {
    document.split("```json").nth(1).and_then(|rest| rest.split("```").next()).expect("a ```json block")
}

#[test]
fn the_readme_example_compiles() {
    let config = Config::parse(first_json_example(include_str!("../../README.md")).as_bytes())
        .expect("the README example is valid");
    assert!(!config.issuers.providers.is_empty() && !config.policies.allow.is_empty());
}

#[test]
fn the_policy_reference_example_compiles() {
    let example = first_json_example(include_str!("../../docs/authorization.md"));
    let config = Config::parse(example.as_bytes()).expect("the docs/authorization.md example is valid");
    assert_eq!((config.policies.deny.len(), config.policies.allow.len(), config.policies.audit.len()), (2, 1, 1));
    assert_eq!(config.token_requirements.len(), 2);
    assert!(config.peer_is_source_address);
}

#[test]
fn durations() {
    assert_eq!(parse_duration_ms("5s"), Some(5_000));
    assert_eq!(parse_duration_ms("1.5s"), Some(1_500));
    assert_eq!(parse_duration_ms("250ms"), Some(250));
    assert_eq!(parse_duration_ms("2m"), Some(120_000));
    assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
    // Exact, truncated to whole milliseconds.
    assert_eq!(parse_duration_ms("1.0015s"), Some(1_001));
    assert_eq!(parse_duration_ms("0.5ms"), Some(0));
    assert_eq!(parse_duration_ms(".5s"), Some(500));
    assert_eq!(parse_duration_ms("5.s"), Some(5_000));
    assert_eq!(parse_duration_ms("0.1m"), Some(6_000));
    assert_eq!(parse_duration_ms("277.7h"), Some(999_720_000));
    assert_eq!(parse_duration_ms("999999999999ms"), Some(999_999_999_999));
    for bad in
        ["", "s", "5", "-1s", "1e3s", "5 s", "nans", ".s", "1.2.3s", "1000000000000ms", "99999999999999999999999h"]
    {
        assert_eq!(parse_duration_ms(bad), None, "{bad}");
    }
}

#[test]
fn limits_default_and_are_bounded() {
    let rule = json!({"issuer": "i", "jwksUri": "http://x/c"});
    let config = Config::parse(json!({"jwtRules": [rule]}).to_string().as_bytes()).expect("valid");
    assert_eq!(
        (config.issuers.limits, config.max_jwks_bytes),
        (TokenLimits::default(), Limits::default().max_jwks_bytes)
    );
    assert_eq!(config.issuers.limits.max_token_bytes, crate::authn::jwt::MAX_TOKEN_BYTES);
    let limits = json!({"maxTokenBytes": 8192, "maxClaimDepth": 6, "maxJwksBytes": 65536});
    let config = Config::parse(json!({"jwtRules": [rule], "limits": limits}).to_string().as_bytes()).expect("valid");
    assert_eq!(
        (config.issuers.limits, config.max_jwks_bytes),
        (TokenLimits { max_token_bytes: 8192, max_json_depth: 6 }, 65536)
    );
    let partial = Config::parse(
        json!({"policies": [], "jwtRules": [rule], "limits": {"maxClaimDepth": 3}}).to_string().as_bytes(),
    )
    .expect("valid");
    assert_eq!(partial.issuers.limits.max_json_depth, 3);
    assert_eq!(partial.max_jwks_bytes, crate::keys::jwks::MAX_JWKS_BYTES);
    // The token cache: sized for a sidecar by default, larger (a gateway) or off on request.
    assert_eq!(
        partial.token_cache,
        (crate::authn::token_cache::VERIFIED_CAPACITY, crate::authn::token_cache::IDENTITY_CAPACITY)
    );
    let sized = json!({"tokenCacheSize": 50_000, "identityCacheSize": 0});
    let config = Config::parse(json!({"jwtRules": [rule], "limits": sized}).to_string().as_bytes()).expect("valid");
    assert_eq!(config.token_cache, (50_000, 0));
    for (limits, field, reason) in [
        (json!({"tokenCacheSize": 200_000}), "limits.tokenCacheSize", "outside 0..=100000"),
        (json!({"identityCacheSize": 2_000}), "limits.identityCacheSize", "outside 0..=1000"),
        (json!({"maxTokenBytes": 0}), "limits.maxTokenBytes", "outside 256..=1048576"),
        (json!({"maxTokenBytes": 2_000_000}), "limits.maxTokenBytes", "outside"),
        (json!({"maxClaimDepth": 1}), "limits.maxClaimDepth", "outside 2..=64"),
        (json!({"maxClaimDepth": 1000}), "limits.maxClaimDepth", "outside"),
        (json!({"maxJwksBytes": 10}), "limits.maxJwksBytes", "outside"),
        (json!({"maxTokenBytes": -1}), "limits.maxTokenBytes", "invalid value"),
        (json!({"maxTokenBytes": "16k"}), "limits.maxTokenBytes", "invalid type"),
        (json!({"maxTokens": 1}), "limits.maxTokens", "unknown field"),
    ] {
        let err = error(json!({"jwtRules": [rule], "limits": limits}));
        assert_eq!(err.field, field, "{limits}");
        assert!(err.reason.contains(reason), "{limits}: {}", err.reason);
    }
}

#[test]
fn inline_jwks_obeys_the_jwks_size_limit() {
    let key = json!({"keys": [crate::testkeys::jwk(crate::testkeys::key(0), "a")]}).to_string();
    let inline = format!("{key}{}", " ".repeat(1024));
    let limits = json!({"maxJwksBytes": 1024});
    let err = error(json!({"jwtRules": [{"issuer": "i", "jwks": inline}], "limits": limits}));
    assert_eq!(err.field, "jwtRules[0].jwks");
    assert!(err.reason.contains("exceeds the 1024-byte limit"), "{}", err.reason);
}

#[test]
fn errors_keep_their_order_across_a_list() {
    let rule = json!({"issuer": "i", "jwksUri": "http://x/c"});
    let policy =
        |operation: Value| json!({"jwtRules": [rule], "policies": [{"rules": [{"to": [{"operation": operation}]}]}]});
    // An empty value anywhere in a list is reported before a misplaced `*`.
    let err = error(policy(json!({"methods": ["a*b", ""]})));
    assert_eq!(
        (err.field.as_str(), err.reason.as_str()),
        ("policies[0].rules[0].to[0].operation.methods[1]", "must not be empty")
    );
    // Host errors quote the value as written.
    let err = error(policy(json!({"hosts": ["*A*"]})));
    assert!(err.reason.starts_with("\"*A*\""), "{err}");
    // Every principal's `*` before any principal's empty issuer.
    let from = json!({"jwtRules": [rule], "policies": [{"rules": [{"from": [{"source": {"requestPrincipals": ["/x", "a*b"]}}]}]}]});
    let err = error(from);
    assert_eq!(err.field, "policies[0].rules[0].from[0].source.requestPrincipals[1]");
    // A malformed duration is reported as such, whatever the key source.
    let key = json!({"keys": [crate::testkeys::jwk(crate::testkeys::key(0), "a")]}).to_string();
    let err = error(json!({"jwtRules": [{"issuer": "i", "jwks": key, "timeout": "bogus"}]}));
    assert_eq!(err.field, "jwtRules[0].timeout");
    assert!(err.reason.contains("is not a duration"), "{err}");
    let err = error(json!({"jwtRules": [{"issuer": "i", "jwksUri": "ftp://x", "timeout": "bogus"}]}));
    assert_eq!(err.field, "jwtRules[0].timeout");
}

#[test]
fn claim_rules_default_and_parse() {
    let rules = |extra: serde_json::Value| {
        let mut rule = json!({"issuer": "i", "jwksUri": "http://x/c"});
        rule.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        let config = Config::parse(json!({"jwtRules": [rule]}).to_string().as_bytes()).expect("valid");
        config.issuers.providers[0].claims.clone()
    };
    let defaults = rules(json!({}));
    assert_eq!(defaults, crate::authn::claims::ClaimRules::default());
    assert_eq!((defaults.clock_skew_seconds, defaults.require_expiration), (60, true));
    let given = rules(json!({"clockSkew": "0s", "requireExpiration": true, "maxLifetime": "1h",
                             "requiredClaims": {"typ": ["Bearer"], "realm_access.roles": ["user", "admin"]}}));
    assert_eq!((given.clock_skew_seconds, given.max_lifetime_seconds), (0, Some(3600)));
    // In name order, each with its values.
    let required: Vec<(Vec<String>, Vec<String>)> =
        given.required.iter().map(|r| (vec![format!("{:?}", r.claim)], r.values.clone())).collect();
    assert_eq!(required.len(), 2);
    assert!(required[0].0[0].contains("realm_access.roles") && required[0].1 == ["user", "admin"], "{required:?}");
    assert!(required[1].0[0].contains("typ") && required[1].1 == ["Bearer"], "{required:?}");
    assert!(!rules(json!({"requireExpiration": false})).require_expiration);
    assert_eq!(rules(json!({"clockSkew": "2m"})).clock_skew_seconds, 120);
}

#[test]
fn claim_rules_are_refused_with_their_field() {
    let rule = |extra: serde_json::Value| {
        let mut rule = json!({"issuer": "i", "jwksUri": "http://x/c"});
        rule.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        json!({"jwtRules": [rule]})
    };
    let cases = [
        (json!({"clockSkew": "11m"}), "jwtRules[0].clockSkew", "too long: at most 600s"),
        (json!({"clockSkew": "1500ms"}), "jwtRules[0].clockSkew", "whole seconds"),
        (json!({"clockSkew": "soon"}), "jwtRules[0].clockSkew", "not a duration"),
        (json!({"clockSkew": 60}), "jwtRules[0].clockSkew", "invalid type: integer `60`, expected a string"),
        (json!({"requireExpiration": "yes"}), "jwtRules[0].requireExpiration", "expected a boolean"),
        (json!({"maxLifetime": "0s"}), "jwtRules[0].maxLifetime", "at least 1s"),
        (json!({"maxLifetime": "8785h"}), "jwtRules[0].maxLifetime", "too long: at most 8784h"),
        (
            json!({"maxLifetime": "367h", "requireExpiration": false}),
            "jwtRules[0].maxLifetime",
            "needs requireExpiration",
        ),
        (json!({"requiredClaims": ["typ"]}), "jwtRules[0].requiredClaims", "expected a map of names to lists"),
        (json!({"requiredClaims": {"typ": "Bearer"}}), "jwtRules[0].requiredClaims.typ", "expected a sequence"),
        (json!({"requiredClaims": {"typ": []}}), "jwtRules[0].requiredClaims.typ", "at least one accepted value"),
        (json!({"requiredClaims": {"typ": ["Bearer", ""]}}), "jwtRules[0].requiredClaims.typ[1]", "must not be empty"),
        (json!({"requiredClaims": {"": ["x"]}}), "jwtRules[0].requiredClaims", "must not be empty"),
        (json!({"requiredClaims": {"exp": ["1"]}}), "jwtRules[0].requiredClaims.exp", "checked by requireExpiration"),
    ];
    for (extra, field, reason) in cases {
        let err = error(rule(extra.clone()));
        assert_eq!(err.field, field, "{extra}: {err}");
        assert!(err.reason.contains(reason), "{extra}: {err}");
    }
}
