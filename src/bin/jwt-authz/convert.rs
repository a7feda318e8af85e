//! `convert`: Istio RequestAuthentication and AuthorizationPolicy resources into one plugin
//! configuration with the same meaning.
//!
//! The plugin's JSON shape is Istio's (`jwtRules`, policy `rules`), so most of the work is
//! choosing what carries over. Anything that cannot be expressed is an error naming the field, never
//! dropped: leaving out a `from`, `to` or `when` of an ALLOW rule widens who gets in, and leaving
//! out part of a DENY rule changes what it denies. Sources about the mTLS peer (principals,
//! namespaces, service accounts) are Istio's to enforce: such policies stay AuthorizationPolicies.

use crate::documents::Document;
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

const SOURCE_FIELDS: [&str; 6] =
    ["requestPrincipals", "notRequestPrincipals", "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"];
const PEER_SOURCE_FIELDS: [&str; 6] =
    ["principals", "notPrincipals", "namespaces", "notNamespaces", "serviceAccounts", "notServiceAccounts"];
const OPERATION_FIELDS: [&str; 8] =
    ["paths", "notPaths", "methods", "notMethods", "hosts", "notHosts", "ports", "notPorts"];
/// Fields that only say where a resource applies; the WasmPlugin's selector decides that here.
const TARGETING_FIELDS: [&str; 3] = ["selector", "targetRef", "targetRefs"];

/// Converts every RequestAuthentication and AuthorizationPolicy among the documents.
pub fn convert(documents: &[Document]) -> Result<Converted, String> {
    let mut converted =
        Converted { config: Value::Null, jwt_rule_origins: Vec::new(), policy_origins: Vec::new(), notes: Vec::new() };
    let mut jwt_rules = Vec::new();
    let mut policies = Vec::new();
    for document in documents {
        let origin = format!("{}: {}", document.file, document.describe());
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
            other => converted.notes.push(format!(
                "{origin}: skipped (kind {}), only RequestAuthentication and AuthorizationPolicy convert",
                other.unwrap_or("missing")
            )),
        }
    }
    if jwt_rules.is_empty() && policies.is_empty() {
        return Err("no RequestAuthentication or AuthorizationPolicy found".to_string());
    }
    let mut config = Map::new();
    if !jwt_rules.is_empty() {
        config.insert("jwtRules".into(), Value::Array(jwt_rules));
    }
    if !policies.is_empty() {
        config.insert("policies".into(), Value::Array(policies));
    }
    converted.config = Value::Object(config);
    Ok(converted)
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
                "{origin}: spec.{field} not carried over: the WasmPlugin's selector decides which workloads run the filter"
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
                    rules.iter().enumerate().map(|(i, r)| rule(r, &format!("{field}[{i}]"))).collect();
                result.insert("rules".into(), Value::Array(converted?));
            }
            _ if TARGETING_FIELDS.contains(&key.as_str()) => {}
            _ => return Err(format!("{field}: unknown field")),
        }
    }
    // Istio: an ALLOW policy without rules matches nothing; the plugin reads a missing list the same way.
    Ok(Value::Object(result))
}

fn rule(value: &Value, path: &str) -> Result<Value, String> {
    let mut result = Map::new();
    for (key, value) in object(value, path)? {
        let field = format!("{path}.{key}");
        let converted = match key.as_str() {
            "from" => wrapped_list(value, &field, "source", source)?,
            "to" => wrapped_list(value, &field, "operation", operation)?,
            // `when` keys are checked by the plugin's own parser, which names what it supports.
            "when" => value.clone(),
            _ => return Err(format!("{field}: unknown field")),
        };
        result.insert(key.clone(), converted);
    }
    Ok(Value::Object(result))
}

/// A list of `{source: {...}}` or `{operation: {...}}` entries.
fn wrapped_list(
    value: &Value,
    path: &str,
    inner: &str,
    convert: fn(&Map<String, Value>, &str) -> Result<Value, String>,
) -> Result<Value, String> {
    let entries: Result<Vec<Value>, String> = array(value, path)?
        .iter()
        .enumerate()
        .map(|(i, entry)| wrapped(entry, &format!("{path}[{i}]"), inner, convert))
        .collect();
    Ok(Value::Array(entries?))
}

/// `{source: {...}}` / `{operation: {...}}`.
fn wrapped(
    value: &Value,
    path: &str,
    inner: &str,
    convert: fn(&Map<String, Value>, &str) -> Result<Value, String>,
) -> Result<Value, String> {
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

fn source(fields: &Map<String, Value>, path: &str) -> Result<Value, String> {
    checked_copy(
        fields,
        path,
        &SOURCE_FIELDS,
        &PEER_SOURCE_FIELDS,
        "is about the mTLS peer's identity, which the plugin does not see; keep this policy in Istio",
    )
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
        convert(&parse("in.yaml", yaml).map_err(|e| e.0)?)
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

    #[test]
    fn what_cannot_be_expressed_is_an_error_naming_the_field() {
        let cases = [
            (
                "spec: {rules: [{from: [{source: {namespaces: [shop]}}]}]}",
                "AuthorizationPolicy p spec.rules[0].from[0].source.namespaces: is about the mTLS peer",
            ),
            (
                "spec: {rules: [{from: [{source: {requestPrincipals: ['*'], serviceAccounts: [a]}}]}]}",
                "spec.rules[0].from[0].source.serviceAccounts: is about the mTLS peer",
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
        assert_eq!(nothing, "no RequestAuthentication or AuthorizationPolicy found");
        let no_spec = convert_yaml("kind: RequestAuthentication\nmetadata: {name: r}\n").err().unwrap_or_default();
        assert_eq!(no_spec, "in.yaml: RequestAuthentication r: spec is missing");
    }
}
