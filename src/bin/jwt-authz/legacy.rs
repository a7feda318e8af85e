//! Istio before 1.5: the `authentication.istio.io/v1alpha1` `Policy` and `MeshPolicy`, converted
//! with the semantics those versions gave them (istio/api `authentication/v1alpha1/policy.proto`).
//!
//! An origin (`origins[].jwt`) made a valid JWT of one of the origins *required* on the targeted
//! workloads (unless `originIsOptional`), except where its `triggerRules` skipped validation; a
//! RequestAuthentication only checks the tokens present. So each policy becomes `jwtRules` plus
//! `tokenRequirements`: a requirement of the origins' issuers where validation was triggered, and
//! `skipValidation` where it was not.

use serde_json::{json, Map, Value};

/// `jwtRules`, `tokenRequirements` and `policies` of one legacy policy, and the source path of
/// each rule.
pub struct Legacy {
    pub jwt_rules: Vec<(Value, String)>,
    pub requirements: Vec<Value>,
    pub policies: Vec<Value>,
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
    // `peers: [{mtls: {}}]` required a mutual-TLS peer: a DENY of requests without a peer identity
    // (Istio's own way to say it with an AuthorizationPolicy); `mode: PERMISSIVE` or
    // `peerIsOptional` did not require one.
    let mut policies = Vec::new();
    if let Some(peers) = spec.get("peers") {
        let mtls = peers.as_array().into_iter().flatten().filter_map(|peer| peer.get("mtls")).collect::<Vec<_>>();
        let permissive = mtls.iter().any(|m| m.get("mode").and_then(Value::as_str) == Some("PERMISSIVE"));
        let optional = spec.get("peerIsOptional").and_then(Value::as_bool) == Some(true);
        if !mtls.is_empty() && !permissive && !optional {
            policies.push(json!({"name": format!("{name}-mtls-peer"), "action": "DENY",
                                 "rules": [{"from": [{"source": {"notPrincipals": ["*"]}}]}]}));
        }
        notes.push(format!(
            "{origin}: spec.peers: the transport's mutual TLS stays with Istio (a PeerAuthentication for the same \
             workloads){}",
            if policies.is_empty() { "" } else { "; requests without a peer identity are denied, as then" }
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
        None => return Ok(Legacy { jwt_rules: Vec::new(), requirements: Vec::new(), policies }),
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
                "triggerRules" => {} // below: every origin must have the same
                other if !JWT_FIELDS.contains(&other) => {
                    return Err(format!("{}.{other}: unknown field", at(&field)));
                }
                _ => {}
            }
        }
        let own = jwt.get("triggerRules");
        if index == 0 {
            triggers = own;
        } else if own != triggers {
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
        return Ok(Legacy { jwt_rules, requirements, policies });
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
    Ok(Legacy { jwt_rules, requirements, policies })
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

/// Istio < 1.5's `rbac.istio.io/v1alpha1` kinds.
pub fn is_rbac(kind: Option<&str>, api: Option<&str>) -> bool {
    matches!(kind, Some("ServiceRole" | "ServiceRoleBinding" | "ClusterRbacConfig" | "RbacConfig"))
        && api.is_some_and(|api| api.starts_with("rbac.istio.io/"))
}

/// A `ServiceRoleBinding` of `role` (its spec) as an ALLOW policy: each role rule a `to`, the
/// subjects the `from`s (and `when`s). A subject's `user` is the peer's principal, or, where a
/// legacy Policy bound the principal to the origin (`principalBinding: USE_ORIGIN`), the token's
/// `iss/sub`, as in those versions.
pub fn binding(
    binding: &Map<String, Value>,
    role: &Map<String, Value>,
    name: &str,
    origin: &str,
    user_is_request_principal: bool,
    notes: &mut Vec<String>,
) -> Result<Value, String> {
    let mut to = Vec::new();
    for (r, rule) in role.get("rules").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let field = format!("{origin} (its ServiceRole) spec.rules[{r}]");
        let rule = rule.as_object().ok_or_else(|| format!("{field}: must be a mapping"))?;
        let mut operation = Map::new();
        let mut when = Vec::new();
        for (key, value) in rule {
            match key.as_str() {
                "methods" | "notMethods" | "paths" | "notPaths" => {
                    // `*` meant any: no constraint.
                    if value.as_array().is_some_and(|v| v.iter().any(|m| m == "*")) {
                        continue;
                    }
                    operation.insert(key.clone(), value.clone());
                }
                "services" => {
                    let services: Vec<&str> =
                        value.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    if services != ["*"] {
                        notes.push(format!(
                            "{field}.services ({}) not carried over: deploy on those services' workloads",
                            services.join(", ")
                        ));
                    }
                }
                "constraints" => {
                    for (c, constraint) in value.as_array().into_iter().flatten().enumerate() {
                        let key = constraint.get("key").and_then(Value::as_str).unwrap_or_default();
                        let values = constraint.get("values").cloned().unwrap_or(json!([]));
                        match key {
                            "destination.port" => {
                                operation.insert("ports".into(), values);
                            }
                            k if k.starts_with("request.headers[") => when.push(json!({"key": k, "values": values})),
                            other => {
                                return Err(format!(
                                    "{field}.constraints[{c}].key: {other:?} cannot be expressed (destination.port and \
                                     request.headers[...] can)"
                                ))
                            }
                        }
                    }
                }
                other => return Err(format!("{field}.{other}: unknown field")),
            }
        }
        to.push((operation, when));
    }
    let mut rules = Vec::new();
    let subjects = binding.get("subjects").and_then(Value::as_array).cloned().unwrap_or_default();
    for (s, subject) in subjects.iter().enumerate() {
        let field = format!("{origin} spec.subjects[{s}]");
        let subject = subject.as_object().ok_or_else(|| format!("{field}: must be a mapping"))?;
        let mut source = Map::new();
        let mut when = Vec::new();
        for (key, value) in subject {
            match (key.as_str(), value.as_str()) {
                ("user", Some("*")) => {}
                ("user", Some(user)) => {
                    let field = if user_is_request_principal { "requestPrincipals" } else { "principals" };
                    source.insert(field.into(), json!([user]));
                }
                ("properties", _) => {
                    for (property, value) in value.as_object().into_iter().flatten() {
                        let value = value.as_str().unwrap_or_default();
                        match property.as_str() {
                            "source.namespace" => {
                                source.insert("namespaces".into(), json!([value]));
                            }
                            "source.principal" => {
                                source.insert("principals".into(), json!([value]));
                            }
                            "request.auth.principal" => {
                                source.insert("requestPrincipals".into(), json!([value]));
                            }
                            p if p.starts_with("request.auth.claims[") || p.starts_with("request.headers[") => {
                                when.push(json!({"key": p, "values": [value]}));
                            }
                            "request.auth.audiences" | "request.auth.presenter" => {
                                when.push(json!({"key": property, "values": [value]}));
                            }
                            other => {
                                return Err(format!("{field}.properties.{other}: cannot be expressed"));
                            }
                        }
                    }
                }
                (other, _) => return Err(format!("{field}.{other}: cannot be expressed (user and properties can)")),
            }
        }
        for (operation, role_when) in &to {
            let mut rule = Map::new();
            if !source.is_empty() {
                rule.insert("from".into(), json!([{"source": source.clone()}]));
            }
            if !operation.is_empty() {
                rule.insert("to".into(), json!([{"operation": operation.clone()}]));
            }
            let conditions: Vec<Value> = when.iter().chain(role_when).cloned().collect();
            if !conditions.is_empty() {
                rule.insert("when".into(), Value::Array(conditions));
            }
            rules.push(Value::Object(rule));
        }
    }
    let mut policy = json!({"name": name, "rules": rules});
    // PERMISSIVE bindings were evaluated and logged, not enforced.
    if binding.get("mode").and_then(Value::as_str) == Some("PERMISSIVE") {
        policy["dryRun"] = json!(true);
    }
    Ok(policy)
}
