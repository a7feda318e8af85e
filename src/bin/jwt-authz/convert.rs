//! `convert`: Istio RequestAuthentication and AuthorizationPolicy resources into one plugin
//! configuration with the same meaning.
//!
//! The plugin's JSON shape is Istio's (`jwtRules`, policy `rules`), so most of the work is
//! choosing what carries over. Anything that cannot be expressed is an error naming the field, never
//! dropped: leaving out a `from`, `to` or `when` of an ALLOW rule widens who gets in, and leaving
//! out part of a DENY rule changes what it denies. A bare service account (`serviceAccounts:
//! [cart]`) is in the policy's namespace for Istio, so it is written `namespace/cart` here.

use crate::documents::Document;
use crate::legacy;
use crate::scope::{Scope, Workload};
use serde_json::{json, Map, Value};

/// The converted configuration, and for each `jwtRules` / `policies` entry where it came from.
pub struct Converted {
    pub config: Value,
    pub jwt_rule_origins: Vec<String>,
    pub policy_origins: Vec<String>,
    /// Things carried over with a caveat, or documents skipped.
    pub notes: Vec<String>,
}

impl Converted {
    /// Rewrites a field path of the generated configuration (`policies[1].rules[0]...`) into the
    /// path of the resource it came from.
    pub fn source_of(&self, field: &str) -> String {
        for (prefix, origins) in [("jwtRules[", &self.jwt_rule_origins), ("policies[", &self.policy_origins)] {
            let Some(rest) = field.strip_prefix(prefix) else { continue };
            let Some((index, tail)) = rest.split_once(']') else { continue };
            if let Some(origin) = index.parse::<usize>().ok().and_then(|i| origins.get(i)) {
                return format!("{origin}{tail}");
            }
        }
        field.to_string()
    }
}

const OPERATION_FIELDS: [&str; 8] =
    ["paths", "notPaths", "methods", "notMethods", "hosts", "notHosts", "ports", "notPorts"];
/// The annotation that makes an AuthorizationPolicy a dry run in Istio.
const DRY_RUN: &str = "istio.io/dry-run";
/// Fields that only say where a resource applies; the WasmPlugin's selector decides that here.
const TARGETING_FIELDS: [&str; 3] = ["selector", "targetRef", "targetRefs"];

/// Converts every RequestAuthentication and AuthorizationPolicy among the documents that applies
/// to `target` (all of them without one, provided they all apply to the same workloads).
pub fn convert(documents: &[Document], target: Option<&Workload>, root_namespace: &str) -> Result<Converted, String> {
    let mut converted =
        Converted { config: Value::Null, jwt_rule_origins: Vec::new(), policy_origins: Vec::new(), notes: Vec::new() };
    let mut jwt_rules = Vec::new();
    let mut policies = Vec::new();
    let mut requirements = Vec::new();
    // The first resource of each scope, to name a conflict.
    let mut scopes: Vec<(Scope, String)> = Vec::new();
    let legacy_rbac = LegacyRbac::of(documents);
    for document in documents {
        let origin = format!("{}: {}", document.file, document.describe());
        if matches!(document.kind(), Some("RequestAuthentication" | "AuthorizationPolicy")) {
            let scope = Scope::of(document, root_namespace).map_err(|why| format!("{}: {why}", document.file))?;
            match target {
                Some(workload) => match scope.applies_to(workload, root_namespace) {
                    Ok(true) => {}
                    Ok(false) => {
                        converted.notes.push(format!("{origin}: skipped, it applies to {}", scope.describe()));
                        continue;
                    }
                    Err(why) => return Err(format!("{origin}: {why}; convert it on its own")),
                },
                None => scopes.push((scope, origin.clone())),
            }
        }
        match document.kind() {
            Some("RequestAuthentication") => {
                let spec = spec(document, &origin)?;
                note_targeting(spec, &origin, &mut converted.notes);
                let no_rules = Vec::new();
                let rules = match spec.get("jwtRules") {
                    Some(rules) => array(rules, &format!("{origin} spec.jwtRules"))?,
                    None => &no_rules,
                };
                if rules.is_empty() {
                    converted.notes.push(format!("{origin}: no jwtRules, nothing to convert"));
                }
                for (index, rule) in rules.iter().enumerate() {
                    // The plugin takes jwtRules as they are; its own parser rejects what it lacks.
                    jwt_rules.push(rule.clone());
                    converted.jwt_rule_origins.push(format!("{origin} spec.jwtRules[{index}]"));
                }
            }
            Some("AuthorizationPolicy") => {
                policies.push(policy(document, &origin, &mut converted.notes)?);
                converted.policy_origins.push(format!("{origin} spec"));
            }
            // Istio < 1.5's end-user authentication (a MeshPolicy applies to the whole mesh).
            Some(kind @ ("Policy" | "MeshPolicy")) if is_legacy_authentication(document) => {
                let namespace = document.value.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str);
                if let (Some(workload), "Policy", Some(namespace)) = (target, kind, namespace) {
                    if workload.namespace != namespace {
                        converted.notes.push(format!("{origin}: skipped, it applies to namespace {namespace}"));
                        continue;
                    }
                }
                let empty = Map::new();
                let spec = match document.value.get("spec") {
                    None | Some(Value::Null) => &empty,
                    Some(spec) => object(spec, &format!("{origin} spec"))?,
                };
                let name = document.name().unwrap_or("legacy-policy");
                let legacy = legacy::policy(spec, name, &origin, &mut converted.notes)?;
                for (rule, rule_origin) in legacy.jwt_rules {
                    jwt_rules.push(rule);
                    converted.jwt_rule_origins.push(rule_origin);
                }
                requirements.extend(legacy.requirements);
                for policy in legacy.policies {
                    policies.push(policy);
                    converted.policy_origins.push(format!("{origin} spec.peers"));
                }
            }
            kind if legacy::is_rbac(kind, document.value.get("apiVersion").and_then(Value::as_str)) => {
                let namespace = document.value.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str);
                if let (Some(workload), Some(namespace)) = (target, namespace) {
                    if workload.namespace != namespace && kind != Some("ClusterRbacConfig") {
                        converted.notes.push(format!("{origin}: skipped, it applies to namespace {namespace}"));
                        continue;
                    }
                }
                if kind != Some("ServiceRoleBinding") {
                    continue; // roles are read through their bindings, the mode below
                }
                if legacy_rbac.off {
                    converted.notes.push(format!("{origin}: skipped, the ClusterRbacConfig's mode is OFF"));
                    continue;
                }
                let spec = spec(document, &origin)?;
                let role_name = spec.get("roleRef").and_then(|r| r.get("name")).and_then(Value::as_str).unwrap_or_default();
                let role = legacy_rbac
                    .roles
                    .iter()
                    .find(|(ns, name, _)| *ns == namespace && *name == role_name)
                    .map(|(_, _, role)| *role)
                    .ok_or_else(|| format!("{origin} spec.roleRef: no ServiceRole {role_name:?} in its namespace"))?;
                let name = document.name().unwrap_or("binding");
                policies.push(legacy::binding(spec, role, name, &origin, legacy_rbac.origin_principal, &mut converted.notes)?);
                converted.policy_origins.push(format!("{origin} spec"));
            }
            other => converted.notes.push(format!(
                "{origin}: skipped (kind {}), only RequestAuthentication, AuthorizationPolicy and Istio < 1.5's authentication Policy and RBAC kinds convert",
                other.unwrap_or("missing")
            )),
        }
    }
    if let Some(config) = legacy_rbac.on {
        // RBAC on: what no binding allows is denied, with or without bindings.
        policies.push(json!({"name": format!("{config}-deny-by-default"), "rules": []}));
        converted.policy_origins.push(format!("ClusterRbacConfig {config}"));
        if let Some(scoped) = &legacy_rbac.scoped {
            converted.notes.push(format!(
                "ClusterRbacConfig {config}: mode {scoped} applies to its included (or not excluded) namespaces and \
                 services only: deploy this configuration there"
            ));
        }
    }
    if jwt_rules.is_empty() && policies.is_empty() {
        return Err(
            "no RequestAuthentication or AuthorizationPolicy (or legacy authentication Policy) found".to_string()
        );
    }
    // istiod rewrites principals into the mesh's trust domain; the plugin needs to be told it.
    let text = Value::Array(policies.clone()).to_string();
    if ["\"principals\"", "\"notPrincipals\"", "source.principal"].iter().any(|field| text.contains(field)) {
        converted.notes.push(
            "principals are matched in trustDomain (default cluster.local) and trustDomainAliases: add both to the \
             configuration as your meshConfig sets them"
                .to_string(),
        );
    }
    if let Some(narrowest) = common_workloads(&scopes)? {
        converted.notes.push(format!(
            "the configuration is what Istio applies to {narrowest}: deploy the WasmPlugin there (the same \
             namespace and selector)"
        ));
    }
    let mut config = Map::new();
    if !jwt_rules.is_empty() {
        config.insert("jwtRules".into(), Value::Array(jwt_rules));
    }
    if !policies.is_empty() {
        config.insert("policies".into(), Value::Array(policies));
    }
    if !requirements.is_empty() {
        config.insert("tokenRequirements".into(), Value::Array(requirements));
    }
    converted.config = Value::Object(config);
    Ok(converted)
}

/// Without a target workload, the resources convert together only if Istio applies all of them to
/// one set of workloads: mesh-wide ones anywhere, namespace-wide ones of one namespace, and at most
/// one selector (or set of target references) there. The narrowest scope, when there is one.
fn common_workloads(scopes: &[(Scope, String)]) -> Result<Option<String>, String> {
    let mut namespace: Option<&(Scope, String)> = None;
    let mut narrowest: Option<&(Scope, String)> = None;
    for entry in scopes {
        let (scope, origin) = entry;
        let Scope::Namespaced { namespace: ns, selector, targets } = scope else { continue };
        let conflict = |other: &(Scope, String)| {
            format!(
                "{origin} applies to {} but {} applies to {}: one configuration would let each act on the \
                 other's workloads; convert them separately, or give --namespace and --labels of the workload \
                 the configuration is for",
                scope.describe(),
                other.1,
                other.0.describe()
            )
        };
        match namespace {
            Some(first @ (Scope::Namespaced { namespace: first_ns, .. }, _)) if first_ns != ns => {
                return Err(conflict(first))
            }
            None => namespace = Some(entry),
            _ => {}
        }
        if selector.is_empty() && targets.is_empty() {
            continue;
        }
        match narrowest {
            Some(other) if other.0 != *scope => return Err(conflict(other)),
            None => narrowest = Some(entry),
            _ => {}
        }
    }
    Ok(narrowest.or(namespace).map(|(scope, _)| scope.describe()))
}

fn spec<'a>(document: &'a Document, origin: &str) -> Result<&'a Map<String, Value>, String> {
    match document.value.get("spec") {
        None | Some(Value::Null) => Err(format!("{origin}: spec is missing")),
        Some(spec) => object(spec, &format!("{origin} spec")),
    }
}

fn note_targeting(spec: &Map<String, Value>, origin: &str, notes: &mut Vec<String>) {
    for field in TARGETING_FIELDS {
        if spec.contains_key(field) {
            notes.push(format!(
                "{origin}: spec.{field} not carried over: deploy the WasmPlugin with the same {field}, which decides \
                 where the filter runs"
            ));
        }
    }
}

fn policy(document: &Document, origin: &str, notes: &mut Vec<String>) -> Result<Value, String> {
    // `spec: {}` is valid Istio (an ALLOW policy that matches nothing: deny all).
    let empty = Map::new();
    let spec = match document.value.get("spec") {
        None | Some(Value::Null) => &empty,
        Some(spec) => object(spec, &format!("{origin} spec"))?,
    };
    let path = format!("{origin} spec");
    note_targeting(spec, origin, notes);
    let namespace = document.value.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str);
    let mut result = Map::new();
    if let Some(name) = document.name() {
        result.insert("name".into(), json!(name));
    }
    for (key, value) in spec {
        let field = format!("{path}.{key}");
        match key.as_str() {
            "action" => {
                let action = value.as_str().ok_or_else(|| format!("{field}: must be a string"))?;
                match action {
                    "ALLOW" | "DENY" | "AUDIT" => {
                        result.insert("action".into(), json!(action));
                    }
                    "CUSTOM" => {
                        return Err(format!(
                            "{field}: CUSTOM delegates to an external authorizer; keep this policy in Istio"
                        ))
                    }
                    other => return Err(format!("{field}: unknown action {other:?}")),
                }
            }
            "provider" => return Err(format!("{field}: external authorizers (CUSTOM) are not converted")),
            "rules" => {
                let rules = array(value, &field)?;
                let converted: Result<Vec<Value>, String> =
                    rules.iter().enumerate().map(|(i, r)| rule(r, &format!("{field}[{i}]"), namespace)).collect();
                result.insert("rules".into(), Value::Array(converted?));
            }
            _ if TARGETING_FIELDS.contains(&key.as_str()) => {}
            _ => return Err(format!("{field}: unknown field")),
        }
    }
    if dry_run(document, origin)? {
        result.insert("dryRun".into(), json!(true));
    }
    // Istio: an ALLOW policy without rules matches nothing; the plugin reads a missing list the same way.
    Ok(Value::Object(result))
}

/// Istio's `istio.io/dry-run` annotation, read as Istio reads it (Go's `strconv.ParseBool`). A
/// value Istio would not read as a boolean is an error here: guessing either way would turn a
/// trial policy into an enforcing one, or an enforcing one into a trial.
fn dry_run(document: &Document, origin: &str) -> Result<bool, String> {
    let annotation = document.value.get("metadata").and_then(|m| m.get("annotations")).and_then(|a| a.get(DRY_RUN));
    let field = format!("{origin} metadata.annotations[{DRY_RUN}]");
    match annotation {
        None | Some(Value::Null) => Ok(false),
        Some(Value::String(text)) => match text.as_str() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
            other => Err(format!("{field}: {other:?} is not a boolean (\"true\" or \"false\")")),
        },
        // YAML without quotes: Kubernetes would refuse a non-string annotation; be as strict.
        Some(_) => Err(format!("{field}: annotations are strings; write \"true\" or \"false\"")),
    }
}

fn rule(value: &Value, path: &str, namespace: Option<&str>) -> Result<Value, String> {
    let mut result = Map::new();
    for (key, value) in object(value, path)? {
        let field = format!("{path}.{key}");
        let converted = match key.as_str() {
            "from" => wrapped_list(value, &field, "source", &|fields, path| source(fields, path, namespace))?,
            "to" => wrapped_list(value, &field, "operation", &operation)?,
            // `when` keys are checked by the plugin's own parser, which names what it supports.
            "when" => value.clone(),
            _ => return Err(format!("{field}: unknown field")),
        };
        result.insert(key.clone(), converted);
    }
    Ok(Value::Object(result))
}

/// Converts the inside of one `source` or `operation` entry, given its field path.
type EntryConverter<'a> = dyn Fn(&Map<String, Value>, &str) -> Result<Value, String> + 'a;

/// A list of `{source: {...}}` or `{operation: {...}}` entries.
fn wrapped_list(value: &Value, path: &str, inner: &str, convert: &EntryConverter<'_>) -> Result<Value, String> {
    let entries: Result<Vec<Value>, String> = array(value, path)?
        .iter()
        .enumerate()
        .map(|(i, entry)| wrapped(entry, &format!("{path}[{i}]"), inner, convert))
        .collect();
    Ok(Value::Array(entries?))
}

/// `{source: {...}}` / `{operation: {...}}`.
fn wrapped(value: &Value, path: &str, inner: &str, convert: &EntryConverter<'_>) -> Result<Value, String> {
    let outer = object(value, path)?;
    let mut result = Map::new();
    for (key, value) in outer {
        let field = format!("{path}.{key}");
        if key != inner {
            return Err(format!("{field}: unknown field"));
        }
        result.insert(key.clone(), convert(object(value, &field)?, &field)?);
    }
    Ok(Value::Object(result))
}

fn source(fields: &Map<String, Value>, path: &str, namespace: Option<&str>) -> Result<Value, String> {
    let mut copied = checked_copy(fields, path, &jwt_authz::config::SOURCE_FIELDS, &[], "")?;
    for field in ["serviceAccounts", "notServiceAccounts"] {
        let Some(Value::Array(accounts)) = copied.get_mut(field) else { continue };
        for (i, account) in accounts.iter_mut().enumerate() {
            let Some(name) = account.as_str().filter(|name| !name.contains('/')) else { continue };
            let namespace = namespace.ok_or_else(|| {
                format!(
                    "{path}.{field}[{i}]: a bare service account is in the policy's namespace, and this one names none"
                )
            })?;
            *account = json!(format!("{namespace}/{name}"));
        }
    }
    Ok(copied)
}

fn operation(fields: &Map<String, Value>, path: &str) -> Result<Value, String> {
    checked_copy(fields, path, &OPERATION_FIELDS, &[], "")
}

fn checked_copy(
    fields: &Map<String, Value>,
    path: &str,
    supported: &[&str],
    istio_only: &[&str],
    why: &str,
) -> Result<Value, String> {
    let mut result = Map::new();
    for (key, value) in fields {
        if supported.contains(&key.as_str()) {
            result.insert(key.clone(), value.clone());
        } else if istio_only.contains(&key.as_str()) {
            return Err(format!("{path}.{key}: {why}"));
        } else {
            return Err(format!("{path}.{key}: unknown field"));
        }
    }
    Ok(Value::Object(result))
}

/// What the legacy RBAC kinds among the documents say as a whole: the roles (by namespace and
/// name), the mode, and whether a legacy Policy bound the request principal to the origin.
struct LegacyRbac<'a> {
    roles: Vec<(Option<&'a str>, &'a str, &'a Map<String, Value>)>,
    /// The ClusterRbacConfig's name when its mode turns RBAC on.
    on: Option<String>,
    off: bool,
    /// ON_WITH_INCLUSION or ON_WITH_EXCLUSION.
    scoped: Option<String>,
    origin_principal: bool,
}

impl<'a> LegacyRbac<'a> {
    fn of(documents: &'a [Document]) -> LegacyRbac<'a> {
        let mut rbac = LegacyRbac { roles: Vec::new(), on: None, off: false, scoped: None, origin_principal: false };
        for document in documents {
            let api = document.value.get("apiVersion").and_then(Value::as_str);
            let spec = document.value.get("spec").and_then(Value::as_object);
            let namespace = document.value.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str);
            match document.kind() {
                Some("Policy" | "MeshPolicy") if is_legacy_authentication(document) => {
                    rbac.origin_principal |=
                        spec.and_then(|s| s.get("principalBinding")).and_then(Value::as_str) == Some("USE_ORIGIN");
                }
                kind @ Some("ServiceRole" | "ClusterRbacConfig" | "RbacConfig") if legacy::is_rbac(kind, api) => {
                    let Some(spec) = spec else { continue };
                    if kind == Some("ServiceRole") {
                        rbac.roles.push((namespace, document.name().unwrap_or_default(), spec));
                        continue;
                    }
                    // Unquoted, YAML 1.1 reads ON and OFF as booleans (Istio's examples quote them).
                    let mode = match spec.get("mode") {
                        Some(Value::Bool(true)) => "ON",
                        Some(Value::String(mode)) => mode.as_str(),
                        _ => "OFF",
                    };
                    match mode {
                        "OFF" => rbac.off = true,
                        mode => {
                            rbac.on = Some(document.name().unwrap_or("default").to_string());
                            if mode != "ON" {
                                rbac.scoped = Some(mode.to_string());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        rbac
    }
}

/// `authentication.istio.io/v1alpha1` (the API Istio 1.5 removed), not some other kind named Policy.
fn is_legacy_authentication(document: &Document) -> bool {
    document
        .value
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|api| api.starts_with("authentication.istio.io/"))
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, String> {
    value.as_object().ok_or_else(|| format!("{path}: must be a mapping"))
}

fn array<'a>(value: &'a Value, path: &str) -> Result<&'a Vec<Value>, String> {
    value.as_array().ok_or_else(|| format!("{path}: must be a list"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::parse;

    fn convert_yaml(yaml: &str) -> Result<Converted, String> {
        convert(&parse("in.yaml", yaml).map_err(|e| e.0)?, None, "istio-system")
    }

    const REQUEST_AUTHENTICATION: &str = "
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: keycloak, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  jwtRules:
  - issuer: https://idp.example/realms/shop
    jwksUri: https://idp.example/realms/shop/protocol/openid-connect/certs
    audiences: [shop]
    forwardOriginalToken: true
";

    #[test]
    fn request_authentication_and_policies_convert_in_order() {
        let yaml = format!(
            "{REQUEST_AUTHENTICATION}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-debug, namespace: shop}}
spec:
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/debug*]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: shop}}
spec:
  rules:
  - from: [{{source: {{requestPrincipals: ['*']}}}}]
    to: [{{operation: {{methods: [GET], notPaths: [/admin/*]}}}}]
    when: [{{key: 'request.auth.claims[realm_access][roles]', values: [backendaccess]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: backend}}
"
        );
        let converted = convert_yaml(&yaml).expect("converts");
        assert_eq!(
            converted.config,
            json!({
                "jwtRules": [{
                    "issuer": "https://idp.example/realms/shop",
                    "jwksUri": "https://idp.example/realms/shop/protocol/openid-connect/certs",
                    "audiences": ["shop"],
                    "forwardOriginalToken": true
                }],
                "policies": [
                    {"name": "deny-debug", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/debug*"]}}]}]},
                    {"name": "require-jwt", "rules": [{
                        "from": [{"source": {"requestPrincipals": ["*"]}}],
                        "to": [{"operation": {"methods": ["GET"], "notPaths": ["/admin/*"]}}],
                        "when": [{"key": "request.auth.claims[realm_access][roles]", "values": ["backendaccess"]}]
                    }]}
                ]
            })
        );
        assert!(converted.notes.iter().any(|n| n.contains("spec.selector not carried over")), "{:?}", converted.notes);
        assert!(converted.notes.iter().any(|n| n.contains("Service backend: skipped")), "{:?}", converted.notes);
        assert_eq!(
            converted.source_of("policies[1].rules[0].when[0].key"),
            "in.yaml: AuthorizationPolicy shop/require-jwt spec.rules[0].when[0].key"
        );
        assert_eq!(
            converted.source_of("jwtRules[0].issuer"),
            "in.yaml: RequestAuthentication shop/keycloak spec.jwtRules[0].issuer"
        );
    }

    #[test]
    fn address_host_port_fields_and_audit_carry_over() {
        let yaml = "kind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  action: AUDIT\n  rules:\n  - from: [{source: {ipBlocks: [10.0.0.0/8], notRemoteIpBlocks: [1.2.3.4]}}]\n    to: [{operation: {hosts: [shop.example], notPorts: ['15000']}}]\n";
        let converted = convert_yaml(yaml).expect("converts");
        assert_eq!(
            converted.config,
            json!({"policies": [{"name": "p", "action": "AUDIT", "rules": [{
                "from": [{"source": {"ipBlocks": ["10.0.0.0/8"], "notRemoteIpBlocks": ["1.2.3.4"]}}],
                "to": [{"operation": {"hosts": ["shop.example"], "notPorts": ["15000"]}}]
            }]}]})
        );
    }

    #[test]
    fn an_empty_allow_policy_stays_deny_all() {
        let converted =
            convert_yaml("kind: AuthorizationPolicy\nmetadata: {name: deny-all}\nspec: {}\n").expect("converts");
        assert_eq!(converted.config, json!({"policies": [{"name": "deny-all"}]}));
    }

    const MULTI_NAMESPACE: &str = "
kind: AuthorizationPolicy
metadata: {name: mesh-deny-debug, namespace: istio-system}
spec: {action: DENY, rules: [{to: [{operation: {paths: [/debug/*]}}]}]}
---
kind: AuthorizationPolicy
metadata: {name: shop-wide, namespace: shop}
spec: {action: DENY, rules: [{to: [{operation: {methods: [TRACE]}}]}]}
---
kind: AuthorizationPolicy
metadata: {name: cart-allow, namespace: shop}
spec: {selector: {matchLabels: {app: cart}}, rules: [{to: [{operation: {paths: [/cart/*]}}]}]}
---
kind: AuthorizationPolicy
metadata: {name: web-allow, namespace: shop}
spec: {selector: {matchLabels: {app: web}}, rules: [{to: [{operation: {paths: ['*']}}]}]}
---
kind: AuthorizationPolicy
metadata: {name: billing-allow, namespace: billing}
spec: {rules: [{to: [{operation: {paths: ['*']}}]}]}
";

    fn names(converted: &Converted) -> Vec<String> {
        let policies = converted.config["policies"].as_array().cloned().unwrap_or_default();
        policies.iter().map(|p| p["name"].as_str().unwrap_or_default().to_string()).collect()
    }

    #[test]
    fn policies_for_different_workloads_are_never_merged() {
        let documents = parse("in.yaml", MULTI_NAMESPACE).expect("parses");
        let error = convert(&documents, None, "istio-system").err().expect("refused");
        assert!(error.contains("cart-allow") && error.contains("web-allow"), "{error}");
        assert!(error.contains("--namespace"), "{error}");
        // Two namespaces are two sets of workloads too.
        let two_namespaces: Vec<Document> = documents
            .iter()
            .filter(|d| ["shop-wide", "billing-allow"].contains(&d.name().unwrap_or("")))
            .cloned()
            .collect();
        let error = convert(&two_namespaces, None, "istio-system").err().expect("refused");
        assert!(error.contains("billing") && error.contains("shop"), "{error}");
        // Mesh-wide, namespace-wide and one selector nest: exact for the selected workloads.
        let nested: Vec<Document> = documents
            .iter()
            .filter(|d| ["mesh-deny-debug", "shop-wide", "cart-allow"].contains(&d.name().unwrap_or("")))
            .cloned()
            .collect();
        let converted = convert(&nested, None, "istio-system").expect("converts");
        assert_eq!(names(&converted), ["mesh-deny-debug", "shop-wide", "cart-allow"]);
        assert!(converted.notes.iter().any(|n| n.contains("workloads labelled app=cart")), "{:?}", converted.notes);
    }

    #[test]
    fn a_target_workload_takes_what_istio_applies_to_it() {
        let documents = parse("in.yaml", MULTI_NAMESPACE).expect("parses");
        let cart = Workload { namespace: "shop".into(), labels: Workload::parse_labels("app=cart").expect("labels") };
        let converted = convert(&documents, Some(&cart), "istio-system").expect("converts");
        assert_eq!(names(&converted), ["mesh-deny-debug", "shop-wide", "cart-allow"]);
        assert!(converted.notes.iter().any(|n| n.contains("web-allow") && n.contains("skipped")));
        let billing = Workload { namespace: "billing".into(), labels: Default::default() };
        let converted = convert(&documents, Some(&billing), "istio-system").expect("converts");
        assert_eq!(names(&converted), ["mesh-deny-debug", "billing-allow"]);
        // A resource attached by targetRefs cannot be placed by labels.
        let gateway = "kind: AuthorizationPolicy\nmetadata: {name: gw, namespace: shop}\n\
                       spec: {targetRefs: [{kind: Gateway, name: ingress}], rules: [{}]}\n";
        let error = convert(&parse("gw.yaml", gateway).expect("parses"), Some(&cart), "istio-system").err();
        assert!(error.is_some_and(|e| e.contains("targetRefs")));
    }

    #[test]
    fn the_dry_run_annotation_survives_conversion() {
        let policy = |annotation: &str| {
            convert_yaml(&format!(
                "kind: AuthorizationPolicy\nmetadata: {{name: p, annotations: {{{annotation}}}}}\n\
                 spec: {{action: DENY, rules: [{{to: [{{operation: {{paths: [/admin/*]}}}}]}}]}}\n"
            ))
        };
        for yes in ["istio.io/dry-run: 'true'", "istio.io/dry-run: 'True'", "istio.io/dry-run: '1'"] {
            let converted = policy(yes).expect("converts");
            assert_eq!(converted.config["policies"][0]["dryRun"], json!(true), "{yes}");
        }
        for no in ["istio.io/dry-run: 'false'", "other: 'true'"] {
            let converted = policy(no).expect("converts");
            assert_eq!(converted.config["policies"][0].get("dryRun"), None, "{no}");
        }
        for bad in ["istio.io/dry-run: 'yes'", "istio.io/dry-run: true"] {
            let error = policy(bad).err().expect("refused");
            assert!(error.contains("metadata.annotations[istio.io/dry-run]"), "{bad}: {error}");
        }
    }

    #[test]
    fn mtls_sources_carry_over_and_bare_service_accounts_get_the_policy_namespace() {
        let converted = convert_yaml(
            "kind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec: {rules: [{from: [{source: \
             {principals: [cluster.local/ns/web/sa/web], namespaces: [web], serviceAccounts: [cart, billing/pay], \
             notTrustDomains: [old]}}]}]}\n",
        )
        .expect("converts");
        assert_eq!(
            converted.config["policies"][0]["rules"][0]["from"][0]["source"],
            json!({"principals": ["cluster.local/ns/web/sa/web"], "namespaces": ["web"],
                   "serviceAccounts": ["shop/cart", "billing/pay"], "notTrustDomains": ["old"]})
        );
    }

    #[test]
    fn what_cannot_be_expressed_is_an_error_naming_the_field() {
        let cases = [
            (
                "spec: {rules: [{from: [{source: {requestPrincipals: ['*'], serviceAccounts: [a]}}]}]}",
                "spec.rules[0].from[0].source.serviceAccounts[0]: a bare service account is in the policy's namespace",
            ),
            (
                "spec: {rules: [{from: [{source: {principals: [a], peers: [b]}}]}]}",
                "spec.rules[0].from[0].source.peers: unknown field",
            ),
            ("spec: {action: CUSTOM, provider: {name: opa}}", "spec.action: CUSTOM delegates"),
            (
                "spec: {rules: [{to: [{operation: {paths: [/a]}, extra: 1}]}]}",
                "spec.rules[0].to[0].extra: unknown field",
            ),
            ("spec: {rules: {to: []}}", "spec.rules: must be a list"),
        ];
        for (spec, expected) in cases {
            let yaml = format!("kind: AuthorizationPolicy\nmetadata: {{name: p}}\n{spec}\n");
            let err = convert_yaml(&yaml).err().unwrap_or_else(|| panic!("{spec} must fail"));
            assert!(err.contains(expected), "{spec}: {err}");
            assert!(err.starts_with("in.yaml: AuthorizationPolicy p spec"), "{err}");
        }
        let nothing = convert_yaml("kind: Service\nmetadata: {name: x}\n").err().unwrap_or_default();
        assert_eq!(nothing, "no RequestAuthentication or AuthorizationPolicy (or legacy authentication Policy) found");
        let no_spec = convert_yaml("kind: RequestAuthentication\nmetadata: {name: r}\n").err().unwrap_or_default();
        assert_eq!(no_spec, "in.yaml: RequestAuthentication r: spec is missing");
    }
}
