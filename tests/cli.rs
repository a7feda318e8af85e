//! The `jwt-authz` command on good and bad inputs: exit codes, field paths, and the repository's
//! own WasmPlugin and Istio examples.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jwt-authz")).args(args).current_dir(REPO).output().expect("jwt-authz runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scratch file with this content, in a directory of this test's own.
fn scratch(test: &str, name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("jwt-authz-cli-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join(name);
    std::fs::write(&path, content).expect("scratch file");
    path
}

fn check(path: &Path) -> (i32, String, String) {
    let output = run(&["check", path.to_str().expect("utf-8 path")]);
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

const WASM_PLUGIN_HEAD: &str = "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: authz, namespace: shop}
spec:
  url: oci://registry.example.com/shop/jwt-authz:1
  phase: AUTHN
  failStrategy: FAIL_CLOSE
";

#[test]
fn the_repository_wasm_plugins_pass() {
    for file in ["wasm-plugin.yaml", "examples/istio/external-keycloak.yaml", "examples/envoy/plugin-config.json"] {
        let (code, stdout, stderr) = check(&Path::new(REPO).join(file));
        assert_eq!(code, 0, "{file}: {stderr}");
        assert!(stdout.contains(": ok"), "{file}: {stdout}");
    }
    let (_, stdout, _) = check(&Path::new(REPO).join("wasm-plugin.yaml"));
    assert!(stdout.contains("1 issuer(s), 1 DENY and 1 ALLOW policies"), "{stdout}");
    assert!(stdout.contains("cluster outbound|8080||keycloak.keycloak.svc.cluster.local"), "{stdout}");
}

#[test]
fn json_plugin_config_errors_name_the_field_and_exit_1() {
    let file = scratch(
        "json",
        "config.json",
        r#"{"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "audiences": ["a", ""]}]}"#,
    );
    let (code, stdout, stderr) = check(&file);
    assert_eq!(code, 1, "{stdout}");
    assert!(stderr.contains("config.json: jwtRules[0].audiences[1]: must not be empty"), "{stderr}");
    let empty = scratch("json", "empty.json", "{}");
    let (code, _, stderr) = check(&empty);
    assert_eq!(code, 1);
    assert!(stderr.contains("neither jwtRules nor policies"), "{stderr}");
}

#[test]
fn wasm_plugin_errors_are_prefixed_with_spec_plugin_config() {
    let yaml = format!(
        "{WASM_PLUGIN_HEAD}  pluginConfig:
    jwtRules:
    - issuer: https://idp.example/realms/shop
      jwksUri: https://idp.example/certs
    policies:
    - name: p
      rules:
      - to:
        - operation:
            paths: [/a/*/b]
"
    );
    let (code, _, stderr) = check(&scratch("plugin", "plugin.yaml", &yaml));
    assert_eq!(code, 1);
    assert!(
        stderr.contains(
            "plugin.yaml: WasmPlugin shop/authz spec.pluginConfig.policies[0].rules[0].to[0].operation.paths[0]:"
        ),
        "{stderr}"
    );
    // A YAML scalar of the wrong type is the same error Envoy would log.
    let typed =
        format!("{WASM_PLUGIN_HEAD}  pluginConfig:\n    jwtRules:\n    - issuer: 42\n      jwksUri: http://x/c\n");
    let (code, _, stderr) = check(&scratch("plugin", "typed.yaml", &typed));
    assert_eq!(code, 1);
    assert!(stderr.contains("spec.pluginConfig.jwtRules[0].issuer: invalid type: integer `42`"), "{stderr}");
}

#[test]
fn wasm_plugin_fields_istio_reads_are_checked() {
    let yaml = "apiVersion: extensions.istio.io/v1beta9
kind: WasmPlugin
metadata: {name: authz}
spec:
  url: ftp://somewhere/plugin.wasm
  sha256: sha256:abc
  phase: AUTHENTICATE
  failStrategy: FAIL_OPEN
";
    let (code, _, stderr) = check(&scratch("fields", "fields.yaml", yaml));
    assert_eq!(code, 1);
    for expected in [
        "apiVersion: \"extensions.istio.io/v1beta9\", expected extensions.istio.io/v1alpha1",
        "spec.url: \"ftp://somewhere/plugin.wasm\": scheme \"ftp\" is not one of oci, http, https, file",
        "spec.sha256: \"sha256:abc\": not 64 lower-case hex digits",
        "spec.phase: \"AUTHENTICATE\", expected one of",
        "spec.failStrategy: FAIL_OPEN lets every request through",
        "spec.pluginConfig: missing",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}

#[test]
fn unreadable_and_malformed_files_exit_1_and_usage_errors_exit_2() {
    let (code, _, stderr) = check(Path::new("/nonexistent/plugin.yaml"));
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/plugin.yaml: cannot read"), "{stderr}");
    let (code, _, stderr) = check(&scratch("bad", "dup.yaml", &format!("{WASM_PLUGIN_HEAD}  phase: AUTHZ\n")));
    assert_eq!(code, 1);
    assert!(stderr.contains("invalid YAML") && stderr.contains("duplicate mapping key"), "{stderr}");
    let (code, _, stderr) =
        check(&scratch("bad", "service.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"));
    assert_eq!(code, 1);
    assert!(stderr.contains("no WasmPlugin or TrafficExtension found"), "{stderr}");
    for args in [&[][..], &["check"], &["convert"], &["frobnicate", "x"]] {
        let output = run(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(text(&output.stderr).contains("usage:"), "{args:?}");
    }
    assert_eq!(run(&["--help"]).status.code(), Some(0));
}

#[test]
fn convert_of_the_istio_example_is_the_wasm_plugin_config() {
    let output = run(&["convert", "examples/istio/istio-native.yaml"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let converted: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    let plugin_yaml = std::fs::read_to_string(Path::new(REPO).join("wasm-plugin.yaml")).expect("wasm-plugin.yaml");
    let plugin: Value = serde_saphyr::from_str(&plugin_yaml).expect("wasm-plugin.yaml parses");
    assert_eq!(converted, plugin["spec"]["pluginConfig"]);
    assert!(text(&output.stderr).contains("spec.selector not carried over"), "{}", text(&output.stderr));
}

#[test]
fn convert_output_is_checked_and_errors_point_into_the_sources() {
    let authn = scratch(
        "convert",
        "authn.yaml",
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: idp, namespace: shop}
spec:
  jwtRules:
  - issuer: https://idp.example/realms/shop
    jwksUri: https://idp.example/certs
",
    );
    let good_policy = scratch(
        "convert",
        "good.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers, namespace: shop}
spec:
  rules:
  - from: [{source: {requestPrincipals: ['https://idp.example/realms/shop/*']}}]
    to: [{operation: {methods: [GET]}}]
",
    );
    let output = run(&["convert", authn.to_str().unwrap_or_default(), good_policy.to_str().unwrap_or_default()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let converted: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(
        converted,
        json!({
            "jwtRules": [{"issuer": "https://idp.example/realms/shop", "jwksUri": "https://idp.example/certs"}],
            "policies": [{"name": "readers", "rules": [{
                "from": [{"source": {"requestPrincipals": ["https://idp.example/realms/shop/*"]}}],
                "to": [{"operation": {"methods": ["GET"]}}]
            }]}]
        })
    );

    // The plugin's own parser rejects the `when` key; the message names the source resource.
    let bad_when = scratch(
        "convert",
        "bad-when.yaml",
        "kind: AuthorizationPolicy
metadata: {name: by-ip, namespace: shop}
spec:
  rules:
  - when: [{key: 'experimental.envoy.filters.a.b[c]', values: [shop]}]
",
    );
    let output = run(&["convert", bad_when.to_str().unwrap_or_default()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("bad-when.yaml: AuthorizationPolicy shop/by-ip spec.rules[0].when[0].key: unsupported key"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing printed for an input that does not convert");

    let peer = scratch(
        "convert",
        "peer.yaml",
        "kind: AuthorizationPolicy\nmetadata: {name: mtls}\nspec:\n  rules: [{from: [{source: {principals: [cluster.local/ns/a/sa/b]}}]}]\n",
    );
    // mTLS peer identities convert (the plugin reads the peer certificate); a bare service account
    // without a namespace to place it in does not.
    let output = run(&["convert", peer.to_str().unwrap_or_default()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("cluster.local/ns/a/sa/b"));
    let bare = scratch(
        "convert",
        "bare-sa.yaml",
        "kind: AuthorizationPolicy\nmetadata: {name: mtls}\nspec:\n  rules: [{from: [{source: {serviceAccounts: [b]}}]}]\n",
    );
    let output = run(&["convert", bare.to_str().unwrap_or_default()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("spec.rules[0].from[0].source.serviceAccounts[0]: a bare service account"));

    let duplicate_issuer = run(&["convert", authn.to_str().unwrap_or_default(), authn.to_str().unwrap_or_default()]);
    assert_eq!(duplicate_issuer.status.code(), Some(1));
    assert!(
        text(&duplicate_issuer.stderr).contains("RequestAuthentication shop/idp spec.jwtRules[0].issuer: issuer"),
        "{}",
        text(&duplicate_issuer.stderr)
    );
}

#[test]
fn version_and_help_answer_and_a_closed_pipe_is_not_a_panic() {
    let version = run(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(text(&version.stdout).trim(), format!("jwt-authz {}", env!("CARGO_PKG_VERSION")));
    let help = run(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(text(&help.stdout).contains("jwt-authz --version"));
    // `convert … | head` after head has gone: every write gets EPIPE; the command must not panic
    // ("failed printing to stdout") but end quietly. The reading end is closed before the start.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_jwt-authz"))
        .args(["convert", "examples/istio/istio-native.yaml"])
        .current_dir(REPO)
        .stdout(writer)
        .output()
        .expect("jwt-authz runs");
    assert!(!text(&output.stderr).contains("panicked"), "{}", text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
}

/// istio/api's values: what Istio accepts passes (FAIL_RELOAD, a URL without a scheme, which Istio
/// takes as oci://), what it refuses or what breaks the filter does not, all in one run.
#[test]
fn check_follows_istios_api_and_reports_every_problem_at_once() {
    let valid = "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: authz, namespace: shop}
spec:
  url: registry.example.com/shop/jwt-authz:1
  phase: AUTHN
  failStrategy: FAIL_RELOAD
  type: HTTP
  match: [{mode: SERVER, ports: [{number: 8080}]}]
  pluginConfig:
    jwtRules: [{issuer: 'https://idp.example/realms/shop', jwksUri: 'http://idp.example/certs'}]
";
    let (code, stdout, stderr) = check(&scratch("api", "valid.yaml", valid));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("WasmPlugin shop/authz: ok"), "{stdout}");
    assert!(!stderr.contains("error"), "{stderr}");

    let broken = "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: authz, namespace: shop}
spec:
  url: oci://registry.example.com/shop/jwt-authz:1
  sha256: '0000000000000000000000000000000000000000000000000000000000000000'
  phase: AUTHN
  type: NETWORK
  imagePullPolicy: Sometimes
  match: [{mode: INBOUND}]
  pluginConfg: {}
  pluginConfig:
    jwtRules:
    - {issuer: 'https://idp.example/realms/shop/', jwksUri: 'https://idp.example/certs'}
    - {issuer: '', jwksUri: 'http://idp.example/certs'}
    policies:
    - {name: a, action: MAYBE}
    - rules: [{to: [{operation: {methods: [get]}}]}]
    unsafePaths: SOMETIMES
";
    let (code, _, stderr) = check(&scratch("api", "broken.yaml", broken));
    assert_eq!(code, 1, "{stderr}");
    for expected in [
        "error: ",
        "WasmPlugin shop/authz spec.sha256: all zeros: a placeholder",
        "WasmPlugin shop/authz spec.type: NETWORK: jwt-authz is an HTTP filter",
        "WasmPlugin shop/authz spec.imagePullPolicy: \"Sometimes\", expected one of",
        "WasmPlugin shop/authz spec.match[0].mode: \"INBOUND\", expected one of UNDEFINED, CLIENT, SERVER",
        "WasmPlugin shop/authz spec.pluginConfg: unknown field",
        // Every independent error of the plugin configuration, each with its path.
        "spec.pluginConfig.jwtRules[1].issuer: must not be empty",
        "spec.pluginConfig.policies[0].action: unsupported action \"MAYBE\"",
        "spec.pluginConfig.unsafePaths: \"SOMETIMES\"",
        // Warnings: accepted, but not what was meant.
        "warning: ",
        "spec.pluginConfig.jwtRules[0].issuer: \"https://idp.example/realms/shop/\" ends with a slash",
        "spec.pluginConfig.jwtRules[0].jwksUri: https: the keys are fetched through Envoy cluster",
        "spec.pluginConfig.policies[1].rules[0].to[0].operation.methods[0]: \"get\" never matches",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}

#[test]
fn check_reads_traffic_extensions() {
    let extension = "apiVersion: extensions.istio.io/v1alpha1
kind: TrafficExtension
metadata: {name: authz, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: shop-gateway}]
  phase: AUTHN
  priority: 10
  wasm:
    url: oci://registry.example.com/shop/jwt-authz:1
    failStrategy: FAIL_CLOSE
    vmConfig: {env: [{name: TRUST_DOMAIN, value: cluster.local}]}
    pluginConfig:
      jwtRules: [{issuer: 'https://idp.example/realms/shop', jwksUri: 'http://idp.example/certs'}]
";
    let (code, stdout, stderr) = check(&scratch("te", "extension.yaml", extension));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("TrafficExtension shop/authz: ok"), "{stdout}");
    let wrong = extension
        .replace("  phase: AUTHN\n", "  phase: UNSPECIFIED_PHASE\n  selector: {matchLabels: {app: a}}\n")
        .replace("    failStrategy: FAIL_CLOSE\n", "    failStrategy: FAIL_CLOSE\n    phase: AUTHN\n")
        .replace("issuer: 'https://idp.example/realms/shop'", "issuer: 42");
    let (code, _, stderr) = check(&scratch("te", "wrong.yaml", &wrong));
    assert_eq!(code, 1, "{stderr}");
    for expected in [
        "TrafficExtension shop/authz spec.phase: \"UNSPECIFIED_PHASE\", expected one of UNSPECIFIED, AUTHN",
        "TrafficExtension shop/authz spec.targetRefs: only one of selector, targetRef or targetRefs",
        "TrafficExtension shop/authz spec.wasm.phase: unknown field",
        "TrafficExtension shop/authz spec.wasm.pluginConfig.jwtRules[0].issuer: invalid type: integer `42`",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    let ungrouped = extension.replace(", group: gateway.networking.k8s.io", "");
    let (code, _, stderr) = check(&scratch("te", "ungrouped.yaml", &ungrouped));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("spec.targetRefs[0].group: \"\": a Gateway target needs group \"gateway.networking.k8s.io\""),
        "{stderr}"
    );
    // A file with nothing to check among others is said, not silently passed over.
    let service = scratch("te", "service.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n");
    let good = scratch("te", "good.yaml", extension);
    let output = run(&["check", good.to_str().unwrap(), service.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0));
    assert!(text(&output.stderr).contains("service.yaml: no WasmPlugin, TrafficExtension or plugin configuration"));
    let lua = "apiVersion: extensions.istio.io/v1alpha1\nkind: TrafficExtension\nmetadata: {name: l}\nspec:\n  lua: {inlineCode: x}\n";
    let (code, _, stderr) = check(&scratch("te", "lua.yaml", lua));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("spec.lua: jwt-authz is a Wasm module") && stderr.contains("spec.wasm: missing"),
        "{stderr}"
    );
}

/// Istio's own policies beside the plugin: a warning that says whether they will still see the
/// token, and `convert --alongside-istio` makes the configuration for that step.
#[test]
fn istios_policies_next_to_the_plugin_are_a_warning_and_convert_prepares_for_it() {
    let policies = Path::new(REPO).join("examples/istio/istio-native.yaml");
    let plugin = Path::new(REPO).join("wasm-plugin.yaml");
    let output = run(&["check", plugin.to_str().unwrap(), policies.to_str().unwrap()]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("RequestAuthentication") && stderr.contains("still in place beside jwt-authz"), "{stderr}");
    assert!(stderr.contains("removes the token") && stderr.contains("docs/migration.md"), "{stderr}");

    let output = run(&["convert", "--alongside-istio", policies.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let converted: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    for rule in converted["jwtRules"].as_array().unwrap() {
        assert_eq!(rule["forwardOriginalToken"], json!(true), "{rule}");
    }
    for policy in converted["policies"].as_array().unwrap() {
        assert!(policy["action"] == json!("AUDIT") || policy["dryRun"] == json!(true), "{policy}");
    }
    assert!(text(&output.stderr).contains("--alongside-istio: forwardOriginalToken: true"), "{}", text(&output.stderr));
    // That configuration next to Istio's policies: both see the token.
    let alongside = scratch("alongside", "plugin.json", &text(&output.stdout));
    let output = run(&["check", alongside.to_str().unwrap(), policies.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0));
    assert!(text(&output.stderr).contains("both enforce (the token is kept)"), "{}", text(&output.stderr));
    // Without the flag, convert says what deploying its output requires.
    let output = run(&["convert", policies.to_str().unwrap()]);
    assert!(text(&output.stderr).contains("once Istio's RequestAuthentication and AuthorizationPolicy"));
}

/// Istio < 1.5's authentication Policy: what it meant, or a refusal naming what cannot be said.
#[test]
fn convert_reads_the_legacy_authentication_policy() {
    let head =
        "apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: p, namespace: shop}\nspec:\n";
    let origin = "  origins:\n  - jwt: {issuer: 'http://kc/auth/realms/shop', jwksUri: 'http://kc/auth/realms/shop/protocol/openid-connect/certs', jwtHeaders: [x-jwt], jwtParams: [token]}\n";
    let file = scratch("legacy", "policy.yaml", &format!("{head}{origin}"));
    let output = run(&["convert", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let converted: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(
        converted,
        json!({
            "jwtRules": [{"issuer": "http://kc/auth/realms/shop",
                          "jwksUri": "http://kc/auth/realms/shop/protocol/openid-connect/certs",
                          "fromHeaders": [{"name": "x-jwt", "prefix": ""}], "fromParams": ["token"],
                          "forwardOriginalToken": true}],
            // No trigger rules: the token is required everywhere on the workload.
            "tokenRequirements": [{"name": "p-0", "match": {}, "issuers": ["http://kc/auth/realms/shop"]}]
        })
    );
    // A mutual-TLS peer required: requests without a peer identity denied; PERMISSIVE: not required.
    let peers = scratch("legacy", "peers.yaml", &format!("{head}  peers: [{{mtls: {{}}}}]\n{origin}"));
    let output = run(&["convert", peers.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let converted: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(
        converted["policies"],
        json!([{"name": "p-mtls-peer", "action": "DENY", "rules": [{"from": [{"source": {"notPrincipals": ["*"]}}]}]}])
    );
    let permissive =
        scratch("legacy", "permissive.yaml", &format!("{head}  peers: [{{mtls: {{mode: PERMISSIVE}}}}]\n{origin}"));
    let output = run(&["convert", permissive.to_str().unwrap()]);
    let converted: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert!(converted.get("policies").is_none(), "{converted}");
    // originIsOptional: tokens checked when present, none required.
    let optional = scratch("legacy", "optional.yaml", &format!("{head}{origin}  originIsOptional: true\n"));
    let output = run(&["convert", optional.to_str().unwrap()]);
    let converted: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert!(converted.get("tokenRequirements").is_none(), "{converted}");
    for (extra, message) in [
        (
            "      triggerRules: [{includedPaths: [{regex: '/a.*'}]}]\n",
            "regex: regular expressions cannot be expressed",
        ),
        ("  targets: [{name: backend, ports: [{number: 80}]}]\n", "targets with ports cannot be expressed"),
        ("  principalBinding: USE_BOTH\n", "spec.principalBinding: \"USE_BOTH\", expected USE_PEER or USE_ORIGIN"),
        ("  bogus: 1\n", "spec.bogus: unknown field"),
    ] {
        let origin = if extra.starts_with("      ") {
            format!("  origins:\n  - jwt:\n      issuer: i\n      jwksUri: 'http://kc/certs'\n{extra}")
        } else {
            format!("{origin}{extra}")
        };
        let file = scratch("legacy", "refused.yaml", &format!("{head}{origin}"));
        let output = run(&["convert", file.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(1), "{extra}");
        assert!(text(&output.stderr).contains(message), "{extra}: {}", text(&output.stderr));
    }
    // Two origins with different trigger rules cannot become one requirement list.
    let two = format!(
        "{head}  origins:\n  - jwt: {{issuer: a, jwksUri: 'http://a/c', triggerRules: [{{excludedPaths: [{{exact: /h}}]}}]}}\n  - jwt: {{issuer: b, jwksUri: 'http://b/c'}}\n"
    );
    let output = run(&["convert", scratch("legacy", "two.yaml", &two).to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("origins with different trigger rules"), "{}", text(&output.stderr));
}

#[test]
fn convert_reads_legacy_service_roles_and_bindings() {
    let role = "apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRole\nmetadata: {name: r, namespace: shop}\nspec:\n  rules: [{services: ['*'], methods: [GET], paths: ['/a/*'], constraints: [{key: destination.port, values: ['8080']}]}]\n";
    let binding = "apiVersion: rbac.istio.io/v1alpha1\nkind: ServiceRoleBinding\nmetadata: {name: b, namespace: shop}\nspec:\n  mode: PERMISSIVE\n  subjects: [{user: 'cluster.local/ns/shop/sa/web'}, {properties: {source.namespace: ops}}]\n  roleRef: {kind: ServiceRole, name: r}\n";
    let on =
        "apiVersion: rbac.istio.io/v1alpha1\nkind: ClusterRbacConfig\nmetadata: {name: default}\nspec: {mode: 'ON'}\n";
    let file = scratch("rbac", "rbac.yaml", &format!("{role}---\n{binding}---\n{on}"));
    let output = run(&["convert", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let converted: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let to = json!([{"operation": {"methods": ["GET"], "paths": ["/a/*"], "ports": ["8080"]}}]);
    assert_eq!(
        converted["policies"],
        json!([
            // PERMISSIVE: evaluated and logged, not enforced; `user` is the peer without USE_ORIGIN.
            {"name": "b", "dryRun": true, "rules": [
                {"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/web"]}}], "to": to},
                {"from": [{"source": {"namespaces": ["ops"]}}], "to": to},
            ]},
            {"name": "default-deny-by-default", "rules": []},
        ])
    );
    // RBAC off: the bindings had no effect, and are skipped (with the origin that still converts).
    let authn = "apiVersion: authentication.istio.io/v1alpha1\nkind: Policy\nmetadata: {name: p, namespace: shop}\nspec:\n  origins: [{jwt: {issuer: i, jwksUri: 'http://kc/certs'}}]\n";
    let off =
        scratch("rbac", "off.yaml", &format!("{role}---\n{binding}---\n{authn}---\n{}", on.replace("'ON'", "'OFF'")));
    let output = run(&["convert", off.to_str().unwrap()]);
    assert!(text(&output.stderr).contains("the ClusterRbacConfig's mode is OFF"), "{}", text(&output.stderr));
    let labels = role.replace("destination.port, values: ['8080']", "'destination.labels[app]', values: [web]");
    let refused = scratch("rbac", "refused.yaml", &format!("{labels}---\n{binding}"));
    let output = run(&["convert", refused.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("\"destination.labels[app]\" cannot be expressed"),
        "{}",
        text(&output.stderr)
    );
}
