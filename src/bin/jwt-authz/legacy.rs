//! Istio before 1.5: the `authentication.istio.io/v1alpha1` `Policy` and `MeshPolicy`, converted
//! with the semantics those versions gave them (istio/api `authentication/v1alpha1/policy.proto`).
//!
//! An origin (`origins[].jwt`) made a valid JWT of one of the origins *required* on the targeted
//! workloads (unless `originIsOptional`), except where its `triggerRules` skipped validation; a
//! RequestAuthentication only checks the tokens present. So each policy becomes `jwtRules` plus
//! `tokenRequirements`: a requirement of the origins' issuers where validation was triggered, and
//! `skipValidation` where it was not.

use serde_json::{json, Map, Value};

/// `jwtRules` and `tokenRequirements` of one legacy policy, and the source path of each rule.
pub struct Legacy {
    pub jwt_rules: Vec<(Value, String)>,
    pub requirements: Vec<Value>,
}

const POLICY_FIELDS: [&str; 5] = ["targets", "peers", "peerIsOptional", "origins", "originIsOptional"];
const JWT_FIELDS: [&str; 6] = ["issuer", "audiences", "jwksUri", "jwtHeaders", "jwtParams", "triggerRules"];

/// Converts a `Policy` or `MeshPolicy` (`origin` names it in messages).
pub fn policy(spec: &Map<String, Value>, name: &str, origin: &str, notes: &mut Vec<String>) -> Result<Legacy, String> {
    let at = |field: &str| format!("{origin} spec.{field}");
    for key in spec.keys() {
        if key == "principalBinding" {
            continue;
        }
        if !POLICY_FIELDS.contains(&key.as_str()) {
            return Err(format!("{}: unknown field", at(key)));
        }
    }
    if let Some(targets) = spec.get("targets") {
        let names: Vec<&str> =
            targets.as_array().into_iter().flatten().filter_map(|t| t.get("name")?.as_str()).collect();
        notes.push(format!(
            "{origin}: spec.targets ({}) not carried over: deploy the WasmPlugin on those services' workloads \
             (a selector with their labels)",
            names.join(", ")
        ));
        let ports = targets.as_array().into_iter().flatten().any(|t| t.get("ports").is_some());
        if ports {
            return Err(format!(
                "{}: targets with ports cannot be expressed (a WasmPlugin applies to a whole workload); convert \
                 the policy without them, for the workload",
                at("targets")
            ));
        }
    }
    if spec.contains_key("peers") {
        notes.push(format!(
            "{origin}: spec.peers (mutual TLS) stays with Istio: a PeerAuthentication (mode STRICT, or PERMISSIVE \
             for peerIsOptional) for the same workloads; jwt-authz's policies read the identity it establishes"
        ));
    }
    match spec.get("principalBinding").and_then(Value::as_str) {
        None | Some("USE_PEER") | Some("USE_ORIGIN") => {}
        Some(other) => return Err(format!("{}: {other:?}, expected USE_PEER or USE_ORIGIN", at("principalBinding"))),
    }
    if spec.get("principalBinding").and_then(Value::as_str) == Some("USE_ORIGIN") {
        notes.push(format!(
            "{origin}: principalBinding USE_ORIGIN: the request principal is the token's iss/sub, which is what \
             jwt-authz's requestPrincipals match"
        ));
    }
    let origins = match spec.get("origins") {
        None => return Ok(Legacy { jwt_rules: Vec::new(), requirements: Vec::new() }),
        Some(Value::Array(origins)) => origins,
        Some(_) => return Err(format!("{}: must be a list", at("origins"))),
    };
    let mut jwt_rules = Vec::new();
    let mut issuers = Vec::new();
    let mut triggers: Option<&Value> = None;
    for (index, entry) in origins.iter().enumerate() {
        let field = format!("origins[{index}].jwt");
        let Some(jwt) = entry.get("jwt").and_then(Value::as_object) else {
            return Err(format!("{}: missing (an origin is a jwt)", at(&field)));
        };
        let mut rule = Map::new();
        for (key, value) in jwt {
            match key.as_str() {
                "issuer" | "audiences" | "jwksUri" => {
                    rule.insert(key.clone(), value.clone());
                }
                // Istio's JWT filter of that time read these headers' values as the token itself.
                "jwtHeaders" => {
                    let headers: Vec<Value> = value
                        .as_array()
                        .ok_or_else(|| format!("{}.jwtHeaders: must be a list", at(&field)))?
                        .iter()
                        .map(|name| json!({"name": name, "prefix": ""}))
                        .collect();
                    rule.insert("fromHeaders".into(), Value::Array(headers));
                }
                "jwtParams" => {
                    rule.insert("fromParams".into(), value.clone());
                }
                "triggerRules" => {
                    if triggers.is_some_and(|seen| seen != value) || (triggers.is_none() && index > 0) {
                        return Err(format!(
                            "{}.triggerRules: origins with different trigger rules cannot be expressed: give every \
                             origin the same ones",
                            at(&field)
                        ));
                    }
                    triggers = Some(value);
                }
                other if !JWT_FIELDS.contains(&other) => {
                    return Err(format!("{}.{other}: unknown field", at(&field)));
                }
                _ => {}
            }
        }
        if triggers.is_some() && !jwt.contains_key("triggerRules") {
            return Err(format!(
                "{}.triggerRules: origins with different trigger rules cannot be expressed: give every origin the \
                 same ones",
                at(&field)
            ));
        }
        // Those versions forwarded the token to the application.
        rule.insert("forwardOriginalToken".into(), json!(true));
        let issuer = rule.get("issuer").cloned().unwrap_or(Value::Null);
        if !issuers.contains(&issuer) {
            issuers.push(issuer);
        }
        jwt_rules.push((Value::Object(rule), format!("{origin} spec.{field}")));
    }
    let mut requirements = Vec::new();
    if spec.get("originIsOptional").and_then(Value::as_bool) == Some(true) {
        notes.push(format!(
            "{origin}: originIsOptional: tokens are checked when present and not required, as a \
             RequestAuthentication does"
        ));
        return Ok(Legacy { jwt_rules, requirements });
    }
    let required = |index: usize, matcher: Value| json!({"name": format!("{name}-{index}"), "match": matcher, "issuers": issuers.clone()});
    match triggers {
        None => requirements.push(required(0, json!({}))),
        Some(rules) => {
            let rules =
                rules.as_array().ok_or_else(|| format!("{}: must be a list", at("origins[0].jwt.triggerRules")))?;
            for (index, rule) in rules.iter().enumerate() {
                let field = format!("origins[0].jwt.triggerRules[{index}]");
                let mut matcher = Map::new();
                for (key, target) in [("includedPaths", "paths"), ("excludedPaths", "notPaths")] {
                    if let Some(paths) = rule.get(key) {
                        matcher.insert(
                            target.into(),
                            Value::Array(string_matches(paths, &at(&format!("{field}.{key}")))?),
                        );
                    }
                }
                if let Some(extra) = rule
                    .as_object()
                    .and_then(|r| r.keys().find(|k| !["includedPaths", "excludedPaths"].contains(&k.as_str())))
                {
                    return Err(format!("{}.{extra}: unknown field", at(&field)));
                }
                requirements.push(required(index, Value::Object(matcher)));
            }
            // Where no trigger rule matched, Istio skipped the JWT validation altogether.
            requirements.push(json!({"name": format!("{name}-untriggered"), "match": {}, "skipValidation": true}));
        }
    }
    Ok(Legacy { jwt_rules, requirements })
}

/// Istio's StringMatch (`exact`, `prefix`, `suffix`) as path patterns; `regex` has no equivalent.
fn string_matches(value: &Value, path: &str) -> Result<Vec<Value>, String> {
    let list = value.as_array().ok_or_else(|| format!("{path}: must be a list"))?;
    let mut out = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let pattern = match (entry.get("exact"), entry.get("prefix"), entry.get("suffix")) {
            (Some(Value::String(p)), None, None) => p.clone(),
            (None, Some(Value::String(p)), None) => format!("{p}*"),
            (None, None, Some(Value::String(p))) => format!("*{p}"),
            _ if entry.get("regex").is_some() => {
                return Err(format!(
                "{path}[{i}].regex: regular expressions cannot be expressed (paths take exact, prefix* and *suffix)"
            ))
            }
            _ => return Err(format!("{path}[{i}]: expected one of exact, prefix, suffix")),
        };
        out.push(Value::String(pattern));
    }
    Ok(out)
}
