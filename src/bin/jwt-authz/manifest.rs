//! What Istio reads in a WasmPlugin or a TrafficExtension besides the plugin configuration,
//! checked as istio/api defines it (`extensions/v1alpha1/wasm.proto`, `traffic_extension.proto`),
//! plus what would deploy jwt-authz in a way that defeats it, and the plugin configuration's own
//! warnings (what compiles but cannot do what was meant).

use serde_json::{Map, Value};

pub const EXTENSIONS_API: &str = "extensions.istio.io/v1alpha1";

/// How bad a finding is: errors fail `check` (exit 1), warnings are printed and pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding, at a field path (`spec.wasm.url`).
pub struct Finding {
    pub severity: Severity,
    pub field: String,
    pub message: String,
}

fn error(field: impl Into<String>, message: impl Into<String>) -> Finding {
    Finding { severity: Severity::Error, field: field.into(), message: message.into() }
}

fn warning(field: impl Into<String>, message: impl Into<String>) -> Finding {
    Finding { severity: Severity::Warning, field: field.into(), message: message.into() }
}

/// The two resources that deploy a Wasm module in Istio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WasmPlugin,
    /// Istio 1.30's successor of WasmPlugin: the module's fields sit under `spec.wasm`.
    TrafficExtension,
}

impl Kind {
    pub fn of(kind: &str) -> Option<Kind> {
        match kind {
            "WasmPlugin" => Some(Kind::WasmPlugin),
            "TrafficExtension" => Some(Kind::TrafficExtension),
            _ => None,
        }
    }

    /// Where the module's own fields live.
    pub fn module_prefix(self) -> &'static str {
        match self {
            Kind::WasmPlugin => "spec",
            Kind::TrafficExtension => "spec.wasm",
        }
    }

    pub fn plugin_config_field(self) -> &'static str {
        match self {
            Kind::WasmPlugin => "spec.pluginConfig",
            Kind::TrafficExtension => "spec.wasm.pluginConfig",
        }
    }

    /// `spec` fields Istio knows (misspelled ones are silently dropped by a lenient apply): a
    /// WasmPlugin has the module's own fields at `spec`, a TrafficExtension under `spec.wasm`.
    fn spec_fields(self) -> Vec<&'static str> {
        match self {
            Kind::WasmPlugin => {
                [&["selector", "targetRef", "targetRefs", "phase", "priority", "match"], WASM_FIELDS].concat()
            }
            Kind::TrafficExtension => vec!["selector", "targetRefs", "phase", "priority", "match", "wasm", "lua"],
        }
    }

    fn phases(self) -> &'static [&'static str] {
        match self {
            Kind::WasmPlugin => &["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"],
            Kind::TrafficExtension => &["UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"],
        }
    }
}

const WASM_FIELDS: &[&str] = &[
    "url",
    "sha256",
    "imagePullPolicy",
    "imagePullSecret",
    "verificationKey",
    "pluginConfig",
    "pluginName",
    "failStrategy",
    "vmConfig",
    "type",
];

/// Every finding about the resource itself (not its plugin configuration), and that configuration.
pub fn check(kind: Kind, resource: &Value) -> (Vec<Finding>, Option<&Value>) {
    let mut findings = Vec::new();
    let api = resource.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if api != EXTENSIONS_API {
        findings.push(error("apiVersion", format!("{api:?}, expected {EXTENSIONS_API}")));
    }
    let Some(spec) = resource.get("spec").and_then(Value::as_object) else {
        findings.push(error("spec", "missing (or not a mapping)"));
        return (findings, None);
    };
    unknown_fields(spec, &kind.spec_fields(), "spec", &mut findings);
    let module = match kind {
        Kind::WasmPlugin => Some(spec),
        Kind::TrafficExtension => {
            if spec.contains_key("lua") {
                findings.push(error("spec.lua", "jwt-authz is a Wasm module: give spec.wasm, not spec.lua"));
            }
            match spec.get("wasm") {
                Some(Value::Object(wasm)) => {
                    unknown_fields(wasm, WASM_FIELDS, "spec.wasm", &mut findings);
                    Some(wasm)
                }
                Some(_) => {
                    findings.push(error("spec.wasm", "must be a mapping"));
                    None
                }
                None => {
                    findings.push(error("spec.wasm", "missing: exactly one of wasm or lua must be set"));
                    None
                }
            }
        }
    };
    targeting(kind, spec, &mut findings);
    enumerated(spec, "spec", "phase", kind.phases(), &mut findings);
    match spec.get("phase").and_then(Value::as_str) {
        Some("AUTHN") => {}
        Some(phase) if kind.phases().contains(&phase) => findings.push(warning(
            "spec.phase",
            format!(
                "{phase}: jwt-authz belongs in AUTHN, before Istio's own authentication and authorization filters; \
                 elsewhere their decisions come first"
            ),
        )),
        Some(_) => {}
        None => findings.push(warning(
            "spec.phase",
            "not set: Istio then places the filter right before the router, after its own authorization; give AUTHN",
        )),
    }
    if let Some(priority) = spec.get("priority") {
        if priority.as_i64().is_none_or(|p| i32::try_from(p).is_err()) {
            findings.push(error("spec.priority", format!("{priority}: expected a 32-bit integer")));
        }
    }
    traffic_match(spec, &mut findings);
    let plugin_config = module.and_then(|module| module_fields(kind, module, &mut findings));
    (findings, plugin_config)
}

fn unknown_fields(object: &Map<String, Value>, known: &[&str], prefix: &str, findings: &mut Vec<Finding>) {
    for name in object.keys() {
        if !known.contains(&name.as_str()) {
            findings.push(error(
                format!("{prefix}.{name}"),
                format!("unknown field (Istio drops it); expected one of {}", known.join(", ")),
            ));
        }
    }
}

fn enumerated(object: &Map<String, Value>, prefix: &str, field: &str, values: &[&str], findings: &mut Vec<Finding>) {
    match object.get(field) {
        None => {}
        Some(Value::String(value)) if values.contains(&value.as_str()) => {}
        Some(value) => {
            findings.push(error(format!("{prefix}.{field}"), format!("{value}, expected one of {}", values.join(", "))))
        }
    }
}

fn targeting(kind: Kind, spec: &Map<String, Value>, findings: &mut Vec<Finding>) {
    let targeting = ["selector", "targetRef", "targetRefs"].iter().filter(|f| spec.contains_key(**f)).count();
    if targeting > 1 {
        findings.push(error("spec.targetRefs", "only one of selector, targetRef or targetRefs can be set"));
    }
    if kind == Kind::WasmPlugin && spec.contains_key("targetRef") {
        findings.push(warning("spec.targetRef", "deprecated: use targetRefs"));
    }
    if let Some(refs) = spec.get("targetRefs") {
        let Some(refs) = refs.as_array() else {
            findings.push(error("spec.targetRefs", "must be a list"));
            return;
        };
        if refs.len() > 16 {
            findings.push(error("spec.targetRefs", "at most 16 entries"));
        }
        for (i, target) in refs.iter().enumerate() {
            for field in ["kind", "name"] {
                if target.get(field).and_then(Value::as_str).is_none_or(str::is_empty) {
                    findings.push(error(format!("spec.targetRefs[{i}].{field}"), "missing"));
                }
            }
            let kind = target.get("kind").and_then(Value::as_str).unwrap_or_default();
            let group = target.get("group").and_then(Value::as_str).unwrap_or_default();
            // istio/api's attachment rules: each kind with its API group.
            let groups: &[&str] = match kind {
                "Gateway" | "GatewayClass" => &["gateway.networking.k8s.io"],
                "Service" => &["", "core"],
                "ServiceEntry" => &["networking.istio.io"],
                "" => continue,
                _ => {
                    findings.push(error(
                        format!("spec.targetRefs[{i}].kind"),
                        format!("{kind:?}: expected Gateway, GatewayClass, Service (waypoints) or ServiceEntry"),
                    ));
                    continue;
                }
            };
            if !groups.contains(&group) {
                findings.push(error(
                    format!("spec.targetRefs[{i}].group"),
                    format!("{group:?}: a {kind} target needs group {:?}", groups.first().copied().unwrap_or_default()),
                ));
            }
        }
    }
}

fn traffic_match(spec: &Map<String, Value>, findings: &mut Vec<Finding>) {
    let Some(selectors) = spec.get("match") else { return };
    let Some(selectors) = selectors.as_array() else {
        findings.push(error("spec.match", "must be a list"));
        return;
    };
    for (i, selector) in selectors.iter().enumerate() {
        let Some(selector) = selector.as_object() else {
            findings.push(error(format!("spec.match[{i}]"), "must be a mapping"));
            continue;
        };
        let prefix = format!("spec.match[{i}]");
        unknown_fields(selector, &["mode", "ports"], &prefix, findings);
        enumerated(selector, &prefix, "mode", &["UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"], findings);
        if let Some(ports) = selector.get("ports") {
            if !ports.is_array() {
                findings.push(error(format!("{prefix}.ports"), "must be a list"));
            }
            for (j, port) in ports.as_array().into_iter().flatten().enumerate() {
                let number = port.get("number").and_then(Value::as_u64);
                if !number.is_some_and(|n| (1..=65535).contains(&n)) {
                    findings.push(error(format!("{prefix}.ports[{j}].number"), "expected a port number 1..65535"));
                }
            }
        }
    }
}

/// The module's fields (at `spec` for a WasmPlugin, `spec.wasm` for a TrafficExtension); returns
/// the plugin configuration.
fn module_fields<'a>(kind: Kind, module: &'a Map<String, Value>, findings: &mut Vec<Finding>) -> Option<&'a Value> {
    let prefix = kind.module_prefix();
    let text = |field: &str| module.get(field).and_then(Value::as_str);
    match text("url") {
        None | Some("") => findings.push(error(format!("{prefix}.url"), "missing")),
        Some(url) => {
            // Istio takes a URL without a scheme as an OCI reference (oci:// is assumed).
            let scheme = url.split_once("://").map(|(scheme, _)| scheme);
            if let Some(scheme) = scheme.filter(|s| !["oci", "http", "https", "file"].contains(s)) {
                findings.push(error(
                    format!("{prefix}.url"),
                    format!("{url:?}: scheme {scheme:?} is not one of oci, http, https, file (none means oci)"),
                ));
            }
        }
    }
    if let Some(sha) = module.get("sha256") {
        match sha.as_str() {
            Some("") => {}
            Some(sha) if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
                if sha.bytes().all(|b| b == b'0') {
                    findings.push(error(
                        format!("{prefix}.sha256"),
                        "all zeros: a placeholder, not the module's digest (make push prints the real one)",
                    ));
                }
            }
            _ => findings.push(error(
                format!("{prefix}.sha256"),
                format!("{sha}: not 64 lower-case hex digits (no sha256: prefix)"),
            )),
        }
    }
    enumerated(module, prefix, "imagePullPolicy", &["UNSPECIFIED_POLICY", "IfNotPresent", "Always"], findings);
    enumerated(module, prefix, "failStrategy", &["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"], findings);
    if text("failStrategy") == Some("FAIL_OPEN") {
        findings.push(error(
            format!("{prefix}.failStrategy"),
            "FAIL_OPEN lets every request through when the filter cannot load; use FAIL_CLOSE or FAIL_RELOAD",
        ));
    }
    enumerated(module, prefix, "type", &["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"], findings);
    if text("type") == Some("NETWORK") {
        findings.push(error(
            format!("{prefix}.type"),
            "NETWORK: jwt-authz is an HTTP filter and would fail on every connection; use HTTP (or leave it out)",
        ));
    }
    if let Some(secret) = module.get("imagePullSecret") {
        if secret.as_str().is_none_or(|s| s.is_empty() || s.len() > 253) {
            findings.push(error(format!("{prefix}.imagePullSecret"), "expected a Secret name (1 to 253 characters)"));
        }
    }
    if let Some(name) = module.get("pluginName") {
        if name.as_str().is_none_or(|s| s.is_empty() || s.len() > 256) {
            findings.push(error(format!("{prefix}.pluginName"), "expected 1 to 256 characters"));
        }
    }
    vm_config(module, prefix, findings);
    match module.get("pluginConfig") {
        Some(config @ Value::Object(_)) => Some(config),
        Some(_) => {
            findings.push(error(kind.plugin_config_field(), "must be a mapping"));
            None
        }
        None => {
            findings.push(error(kind.plugin_config_field(), "missing (the filter refuses to start without one)"));
            None
        }
    }
}

fn vm_config(module: &Map<String, Value>, prefix: &str, findings: &mut Vec<Finding>) {
    let Some(vm) = module.get("vmConfig") else { return };
    let field = format!("{prefix}.vmConfig");
    let Some(vm) = vm.as_object() else {
        findings.push(error(field, "must be a mapping"));
        return;
    };
    unknown_fields(vm, &["env"], &field, findings);
    for (i, env) in vm.get("env").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let env_field = format!("{field}.env[{i}]");
        if env.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
            findings.push(error(format!("{env_field}.name"), "missing"));
        }
        if let Some(object) = env.as_object() {
            enumerated(object, &env_field, "valueFrom", &["INLINE", "HOST"], findings);
            if object.get("valueFrom").and_then(Value::as_str) == Some("HOST") && object.contains_key("value") {
                findings
                    .push(error(format!("{env_field}.value"), "not with valueFrom: HOST (the proxy's own variable)"));
            }
        }
    }
}

/// What a plugin configuration accepts but cannot mean: warnings with their field paths (under
/// `prefix`, the configuration's own field path in the file).
pub fn config_warnings(config: &Value, prefix: &str) -> Vec<Finding> {
    let at = |field: String| if prefix.is_empty() { field } else { format!("{prefix}.{field}") };
    let mut findings = Vec::new();
    for (i, rule) in config.get("jwtRules").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if let Some(issuer) = rule.get("issuer").and_then(Value::as_str) {
            if issuer.ends_with('/') && issuer.len() > "https://x/".len() {
                findings.push(warning(
                    at(format!("jwtRules[{i}].issuer")),
                    format!(
                        "{issuer:?} ends with a slash; Keycloak's iss never does ({:?}), and tokens whose iss \
                         differs by one character are refused as an unknown issuer",
                        issuer.trim_end_matches('/')
                    ),
                ));
            }
        }
        if let Some(uri) = rule.get("jwksUri").and_then(Value::as_str) {
            if uri.starts_with("https://") {
                let cluster = rule.get("jwksCluster").and_then(Value::as_str).unwrap_or("(the cluster)");
                findings.push(warning(
                    at(format!("jwtRules[{i}].jwksUri")),
                    format!(
                        "https: the keys are fetched through Envoy cluster {cluster}, which must originate TLS \
                         itself (in Istio: a DestinationRule with tls.mode SIMPLE for that host); the filter \
                         does not"
                    ),
                ));
            }
        }
    }
    let policies = config.get("policies").and_then(Value::as_array).into_iter().flatten().enumerate();
    for (p, policy) in policies {
        let rules = policy.get("rules").and_then(Value::as_array).into_iter().flatten().enumerate();
        for (r, rule) in rules {
            let to = rule.get("to").and_then(Value::as_array).into_iter().flatten().enumerate();
            for (t, to) in to {
                let Some(operation) = to.get("operation") else { continue };
                for list in ["methods", "notMethods"] {
                    let methods = operation.get(list).and_then(Value::as_array).into_iter().flatten().enumerate();
                    for (m, method) in methods {
                        let Some(method) = method.as_str() else { continue };
                        if method.bytes().any(|b| b.is_ascii_lowercase()) {
                            findings.push(warning(
                                at(format!("policies[{p}].rules[{r}].to[{t}].operation.{list}[{m}]")),
                                format!(
                                    "{method:?} never matches: HTTP methods are case-sensitive and clients send {:?}",
                                    method.to_ascii_uppercase()
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
    findings
}
