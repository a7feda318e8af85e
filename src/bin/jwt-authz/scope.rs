//! Which workloads an Istio resource applies to, so that `convert` never merges policies meant for
//! different workloads into one configuration (an ALLOW meant for workload A would then admit
//! requests to workload B, and a DENY meant for B would refuse A's).
//!
//! Istio applies to a workload in namespace N with labels L: the root namespace's policies without
//! a selector (mesh-wide), the root namespace's policies whose selector matches L, N's policies
//! without a selector, and N's policies whose selector matches L. `targetRef(s)` attach a policy
//! to a Gateway, Service or ServiceEntry instead, which the labels of a workload cannot decide.

use crate::documents::Document;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The workload a configuration is for (`convert --namespace N --labels k=v,...`).
#[derive(Debug, Clone, Default)]
pub struct Workload {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

impl Workload {
    /// `k=v,k2=v2`.
    pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
        let mut labels = BTreeMap::new();
        for pair in text.split(',').filter(|pair| !pair.trim().is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| format!("--labels: {pair:?} is not key=value"))?;
            labels.insert(key.trim().to_string(), value.trim().to_string());
        }
        Ok(labels)
    }
}

/// Where one resource applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The root namespace without a selector: every workload of the mesh.
    MeshWide,
    /// `namespace` (`None`: the manifest names none; `kubectl apply -n` decides), and the
    /// selector's labels or the target references (empty for namespace-wide).
    Namespaced { namespace: Option<String>, selector: BTreeMap<String, String>, targets: Vec<String> },
}

impl Scope {
    pub fn of(document: &Document, root_namespace: &str) -> Result<Scope, String> {
        let origin = document.describe();
        let namespace =
            document.value.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str).map(str::to_string);
        let spec = document.value.get("spec").and_then(Value::as_object);
        let selector = match spec.and_then(|s| s.get("selector")) {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(selector) => match_labels(selector).map_err(|why| format!("{origin} spec.selector: {why}"))?,
        };
        let mut targets = Vec::new();
        for field in ["targetRef", "targetRefs"] {
            match spec.and_then(|s| s.get(field)) {
                None | Some(Value::Null) => {}
                Some(Value::Array(list)) => targets.extend(list.iter().map(Value::to_string)),
                Some(single) => targets.push(single.to_string()),
            }
        }
        targets.sort();
        if namespace.as_deref() == Some(root_namespace) && selector.is_empty() && targets.is_empty() {
            return Ok(Scope::MeshWide);
        }
        Ok(Scope::Namespaced { namespace, selector, targets })
    }

    /// Whether Istio applies a resource of this scope to `workload`; `Err` when the labels of a
    /// workload cannot tell (target references).
    pub fn applies_to(&self, workload: &Workload, root_namespace: &str) -> Result<bool, String> {
        let Scope::Namespaced { namespace, selector, targets } = self else { return Ok(true) };
        if !targets.is_empty() {
            return Err("attaches to targetRefs, which a workload's labels cannot decide".to_string());
        }
        let namespace_applies = match namespace.as_deref() {
            Some(namespace) => namespace == workload.namespace || namespace == root_namespace,
            None => return Err("names no namespace (metadata.namespace), so where it applies is unknown".to_string()),
        };
        Ok(namespace_applies && selector.iter().all(|(key, value)| workload.labels.get(key) == Some(value)))
    }

    pub fn describe(&self) -> String {
        match self {
            Scope::MeshWide => "mesh-wide".to_string(),
            Scope::Namespaced { namespace, selector, targets } => {
                let namespace = namespace.as_deref().unwrap_or("(no namespace)");
                if !targets.is_empty() {
                    format!("namespace {namespace}, targetRefs {}", targets.join(", "))
                } else if selector.is_empty() {
                    format!("every workload of namespace {namespace}")
                } else {
                    let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("namespace {namespace}, workloads labelled {}", labels.join(","))
                }
            }
        }
    }
}

fn match_labels(selector: &Value) -> Result<BTreeMap<String, String>, String> {
    let empty = Map::new();
    let selector = selector.as_object().ok_or("must be a mapping")?;
    let labels = match selector.get("matchLabels") {
        None | Some(Value::Null) => &empty,
        Some(labels) => labels.as_object().ok_or("matchLabels must be a mapping")?,
    };
    if let Some(other) = selector.keys().find(|key| *key != "matchLabels") {
        return Err(format!("{other}: unknown field (a workload selector has matchLabels)"));
    }
    labels
        .iter()
        .map(|(key, value)| match value {
            Value::String(value) => Ok((key.clone(), value.clone())),
            _ => Err(format!("matchLabels.{key}: must be a string")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::parse;

    fn scope(yaml: &str) -> Scope {
        let documents = parse("in.yaml", yaml).expect("parses");
        Scope::of(&documents[0], "istio-system").expect("scope")
    }

    #[test]
    fn root_namespace_without_selector_is_mesh_wide() {
        assert_eq!(scope("kind: AuthorizationPolicy\nmetadata: {name: a, namespace: istio-system}\n"), Scope::MeshWide);
        let shop = Workload {
            namespace: "shop".into(),
            labels: Workload::parse_labels("app=cart, version=v1").expect("labels"),
        };
        let cases = [
            ("metadata: {namespace: shop}", true),
            ("metadata: {namespace: shop}\nspec: {selector: {matchLabels: {app: cart}}}", true),
            ("metadata: {namespace: shop}\nspec: {selector: {matchLabels: {app: web}}}", false),
            ("metadata: {namespace: other}", false),
            ("metadata: {namespace: istio-system}\nspec: {selector: {matchLabels: {app: cart}}}", true),
            ("metadata: {namespace: istio-system}\nspec: {selector: {matchLabels: {app: web}}}", false),
        ];
        for (yaml, applies) in cases {
            assert_eq!(scope(yaml).applies_to(&shop, "istio-system"), Ok(applies), "{yaml}");
        }
        assert!(scope("metadata: {namespace: shop}\nspec: {targetRefs: [{kind: Gateway, name: gw}]}")
            .applies_to(&shop, "istio-system")
            .is_err());
        assert!(scope("metadata: {name: x}").applies_to(&shop, "istio-system").is_err());
    }
}
