//! Policy matching: Istio AuthorizationPolicy semantics over the normalized request and identity.
//!
//! Order and meaning follow Istio: DENY policies first (any match denies); then, if no ALLOW
//! policy exists the request is allowed, otherwise it is allowed only when some ALLOW rule
//! matches. A rule matches when one of its `from`, one of its `to` and all of its `when` match; an
//! absent (or empty) part matches anything, as an unset repeated field does in Istio.

use serde_json::{Map, Value};

#[derive(Debug, Default)]
pub struct Policies {
    pub deny: Vec<Policy>,
    pub allow: Vec<Policy>,
}

#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

#[derive(Debug)]
pub struct Source {
    pub request_principals: Vec<StringMatch>,
    pub not_request_principals: Vec<StringMatch>,
}

#[derive(Debug)]
pub struct Operation {
    pub paths: Vec<StringMatch>,
    pub not_paths: Vec<StringMatch>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
}

#[derive(Debug)]
pub struct Condition {
    pub key: ConditionKey,
    pub values: Vec<StringMatch>,
    pub not_values: Vec<StringMatch>,
}

/// The attribute a `when` condition reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionKey {
    /// `request.auth.claims[a][b]`.
    Claim(ClaimPath),
    /// `request.auth.principal`: `iss/sub`.
    Principal,
    /// `request.auth.audiences`.
    Audiences,
    /// `request.auth.presenter`: `azp`.
    Presenter,
    /// `request.headers[name]`.
    Header(String),
}

impl ConditionKey {
    /// Parses a `when` key; unknown keys are an error (Istio would ignore the rule).
    pub fn parse(key: &str) -> Result<ConditionKey, String> {
        match key {
            "request.auth.principal" => return Ok(ConditionKey::Principal),
            "request.auth.audiences" => return Ok(ConditionKey::Audiences),
            "request.auth.presenter" => return Ok(ConditionKey::Presenter),
            _ => {}
        }
        if let Some(rest) = key.strip_prefix("request.auth.claims") {
            return ClaimPath::bracketed(rest)
                .map(ConditionKey::Claim)
                .ok_or_else(|| format!("{key:?}: expected request.auth.claims[name] or request.auth.claims[a][b]"));
        }
        if let Some(rest) = key.strip_prefix("request.headers[") {
            return match rest.strip_suffix(']') {
                Some(name) if !name.is_empty() && !name.contains(['[', ']']) => {
                    Ok(ConditionKey::Header(name.to_ascii_lowercase()))
                }
                _ => Err(format!("{key:?}: expected request.headers[name]")),
            };
        }
        Err(format!(
            "unsupported key {key:?}: supported are request.auth.claims[...], request.auth.principal, \
             request.auth.audiences, request.auth.presenter and request.headers[...]"
        ))
    }
}

/// A path into the claims: `[realm_access][roles]` is `["realm_access", "roles"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    pub segments: Vec<String>,
}

impl ClaimPath {
    /// Parses `[a][b][c]`.
    pub fn bracketed(text: &str) -> Option<ClaimPath> {
        let mut segments = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let inner = rest.strip_prefix('[')?;
            let (segment, after) = inner.split_once(']')?;
            if segment.is_empty() || segment.contains('[') {
                return None;
            }
            segments.push(segment.to_string());
            rest = after;
        }
        (!segments.is_empty()).then_some(ClaimPath { segments })
    }

    /// A claim name that may use dots for nesting (`realm_access.roles`).
    pub fn dotted(text: &str) -> ClaimPath {
        ClaimPath { segments: vec![text.to_string()] }
    }

    /// Finds the claim. A single segment with dots is first looked up as a literal claim name
    /// (claims such as `https://example.com/roles` exist), then as a dotted path into nested
    /// objects, which is how older Istio and Keycloak examples write `realm_access.roles`.
    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.segments.split_first()?;
        if let Some(value) = claims.get(first) {
            return rest.iter().try_fold(value, |v, segment| v.get(segment.as_str()));
        }
        if !rest.is_empty() || !first.contains('.') {
            return None;
        }
        let mut parts = first.split('.');
        let top = claims.get(parts.next()?)?;
        parts.try_fold(top, |v, segment| v.get(segment))
    }

    /// Name of the innermost claim, which decides whether it is space-delimited.
    fn leaf(&self) -> &str {
        let last = self.segments.last().map(String::as_str).unwrap_or_default();
        last.rsplit('.').next().unwrap_or(last)
    }
}

/// Claims whose string value is a space-delimited list (RFC 8693 §4.2 `scope`; `permission` as
/// Keycloak's authorization services write it).
const SPACE_DELIMITED_CLAIMS: [&str; 2] = ["scope", "permission"];

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` (any non-empty value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl StringMatch {
    pub fn parse(value: &str) -> StringMatch {
        if value == "*" {
            StringMatch::Present
        } else if let Some(prefix) = value.strip_suffix('*') {
            StringMatch::Prefix(prefix.to_string())
        } else if let Some(suffix) = value.strip_prefix('*') {
            StringMatch::Suffix(suffix.to_string())
        } else {
            StringMatch::Exact(value.to_string())
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(exact) => value == exact,
            StringMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StringMatch::Suffix(suffix) => value.ends_with(suffix.as_str()),
            StringMatch::Present => !value.is_empty(),
        }
    }
}

/// The authenticated caller, as policies see it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub claims: Map<String, Value>,
}

impl Identity {
    /// Istio's request principal: `<iss>/<sub>`.
    pub fn principal(&self) -> String {
        format!("{}/{}", self.issuer, self.subject)
    }
}

/// What policies match on.
pub struct MatchInput<'a> {
    /// Normalized path, without query.
    pub path: &'a str,
    pub method: &'a str,
    pub headers: &'a [(String, String)],
    pub identity: Option<&'a Identity>,
}

/// The outcome of policy evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyDecision {
    Allow,
    /// Denied: by the named DENY policy, or (`None`) because no ALLOW policy matched.
    Deny {
        policy: Option<String>,
    },
}

impl Policies {
    pub fn evaluate(&self, input: &MatchInput<'_>) -> PolicyDecision {
        let principal = input.identity.map(Identity::principal).unwrap_or_default();
        let context = Context { input, principal: &principal };
        if let Some(policy) = self.deny.iter().find(|p| p.matches(&context)) {
            return PolicyDecision::Deny { policy: Some(policy.name.clone()) };
        }
        if self.allow.is_empty() || self.allow.iter().any(|p| p.matches(&context)) {
            PolicyDecision::Allow
        } else {
            PolicyDecision::Deny { policy: None }
        }
    }
}

struct Context<'a> {
    input: &'a MatchInput<'a>,
    principal: &'a str,
}

impl Policy {
    fn matches(&self, context: &Context<'_>) -> bool {
        self.rules.iter().any(|rule| rule.matches(context))
    }
}

impl Rule {
    fn matches(&self, context: &Context<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(context)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(context)))
            && self.when.iter().all(|c| c.matches(context))
    }
}

/// An unset list matches anything; a set one must contain a match.
fn any_matches(matchers: &[StringMatch], value: &str) -> bool {
    matchers.is_empty() || matchers.iter().any(|m| m.matches(value))
}

/// A `not*` list matches when none of its entries does.
fn none_matches(matchers: &[StringMatch], value: &str) -> bool {
    !matchers.iter().any(|m| m.matches(value))
}

impl Source {
    fn matches(&self, context: &Context<'_>) -> bool {
        any_matches(&self.request_principals, context.principal)
            && none_matches(&self.not_request_principals, context.principal)
    }
}

impl Operation {
    fn matches(&self, context: &Context<'_>) -> bool {
        let input = context.input;
        any_matches(&self.paths, input.path)
            && none_matches(&self.not_paths, input.path)
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == input.method))
            && !self.not_methods.iter().any(|m| m == input.method)
    }
}

impl Condition {
    fn matches(&self, context: &Context<'_>) -> bool {
        let values = self.attribute_values(context);
        let positive = self.values.is_empty() || values.iter().any(|v| self.values.iter().any(|m| m.matches(v)));
        let negative = !values.iter().any(|v| self.not_values.iter().any(|m| m.matches(v)));
        positive && negative
    }

    /// Every value the attribute has for this request; an absent attribute has none.
    fn attribute_values(&self, context: &Context<'_>) -> Vec<String> {
        let identity = context.input.identity;
        match &self.key {
            ConditionKey::Principal => identity.map(|_| context.principal.to_string()).into_iter().collect(),
            ConditionKey::Audiences => identity
                .map(|id| crate::claims::token_audiences(&id.claims).map(str::to_string).collect())
                .unwrap_or_default(),
            ConditionKey::Presenter => identity
                .and_then(|id| id.claims.get("azp"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .into_iter()
                .collect(),
            ConditionKey::Claim(path) => identity
                .and_then(|id| path.lookup(&id.claims))
                .map(|value| claim_values(value, SPACE_DELIMITED_CLAIMS.contains(&path.leaf())))
                .unwrap_or_default(),
            ConditionKey::Header(name) => {
                context.input.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect()
            }
        }
    }
}

/// The strings a claim value offers for matching: a string (split on spaces for space-delimited
/// claims), each element of a list, and numbers and booleans by their JSON text.
pub fn claim_values(value: &Value, space_delimited: bool) -> Vec<String> {
    match value {
        Value::String(s) if space_delimited => s.split(' ').filter(|p| !p.is_empty()).map(str::to_string).collect(),
        Value::String(s) => vec![s.clone()],
        Value::Number(_) | Value::Bool(_) => vec![value.to_string()],
        Value::Array(items) => items
            .iter()
            .flat_map(|item| match item {
                Value::Array(_) | Value::Object(_) | Value::Null => Vec::new(),
                other => claim_values(other, false),
            })
            .collect(),
        Value::Object(_) | Value::Null => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identity(claims: Value) -> Identity {
        let Value::Object(claims) = claims else { panic!("object") };
        Identity {
            issuer: claims.get("iss").and_then(Value::as_str).unwrap_or("https://idp/realms/shop").to_string(),
            subject: claims.get("sub").and_then(Value::as_str).unwrap_or("alice-id").to_string(),
            claims,
        }
    }

    fn policies(json: Value) -> Policies {
        crate::config::Config::parse(json.to_string().as_bytes()).expect("valid config").policies
    }

    fn decide(p: &Policies, method: &str, path: &str, who: Option<&Identity>) -> PolicyDecision {
        p.evaluate(&MatchInput { path, method, headers: &[("x-env".into(), "prod".into())], identity: who })
    }

    fn allowed(p: &Policies, method: &str, path: &str, who: Option<&Identity>) -> bool {
        decide(p, method, path, who) == PolicyDecision::Allow
    }

    #[test]
    fn string_match_forms() {
        assert!(StringMatch::parse("/a").matches("/a"));
        assert!(!StringMatch::parse("/a").matches("/a/"));
        assert!(StringMatch::parse("/api/*").matches("/api/x/y"));
        assert!(!StringMatch::parse("/api/*").matches("/apix"));
        assert!(StringMatch::parse("*.html").matches("/x/index.html"));
        assert!(StringMatch::parse("*").matches("/"));
        assert!(!StringMatch::parse("*").matches(""));
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
        let alice = identity(json!({"sub": "alice-id"}));
        assert!(allowed(&p, "GET", "/healthz", None));
        assert!(!allowed(&p, "POST", "/healthz", None));
        assert!(!allowed(&p, "GET", "/api/x", None));
        assert!(allowed(&p, "GET", "/api/x", Some(&alice)));
        assert_eq!(
            decide(&p, "GET", "/debug/x", Some(&alice)),
            PolicyDecision::Deny { policy: Some("deny-debug".into()) }
        );
        assert_eq!(decide(&p, "GET", "/other", Some(&alice)), PolicyDecision::Deny { policy: None });
    }

    #[test]
    fn no_allow_policy_allows_what_is_not_denied_and_empty_allow_denies_all() {
        let only_deny = policies(
            json!({"policies": [{"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]}]}),
        );
        assert!(allowed(&only_deny, "GET", "/x", None));
        assert!(!allowed(&only_deny, "DELETE", "/x", None));
        let allow_nothing = policies(json!({"policies": [{"name": "none", "action": "ALLOW"}]}));
        assert!(!allowed(&allow_nothing, "GET", "/x", None));
        let allow_all = policies(json!({"policies": [{"name": "all", "action": "ALLOW", "rules": [{}]}]}));
        assert!(allowed(&allow_all, "GET", "/x", None));
        let deny_nothing = policies(json!({"policies": [{"action": "DENY"}]}));
        assert!(allowed(&deny_nothing, "GET", "/x", None));
    }

    #[test]
    fn request_principals() {
        let iss = "https://idp/realms/shop";
        let p = |principals: Value, not: Value| {
            policies(
                json!({"policies": [{"rules": [{"from": [{"source": {"requestPrincipals": principals, "notRequestPrincipals": not}}]}]}]}),
            )
        };
        let alice = identity(json!({"iss": iss, "sub": "alice-id"}));
        let other = identity(json!({"iss": "https://evil", "sub": "alice-id"}));
        assert!(allowed(&p(json!([format!("{iss}/alice-id")]), json!([])), "GET", "/", Some(&alice)));
        assert!(!allowed(&p(json!([format!("{iss}/alice-id")]), json!([])), "GET", "/", Some(&other)));
        assert!(allowed(&p(json!([format!("{iss}/*")]), json!([])), "GET", "/", Some(&alice)));
        assert!(!allowed(&p(json!([format!("{iss}/*")]), json!([])), "GET", "/", Some(&other)));
        assert!(allowed(&p(json!(["*/alice-id"]), json!([])), "GET", "/", Some(&other)));
        assert!(!allowed(&p(json!(["*"]), json!([])), "GET", "/", None));
        assert!(allowed(&p(json!([]), json!(["*"])), "GET", "/", None));
        assert!(!allowed(&p(json!([]), json!(["*"])), "GET", "/", Some(&alice)));
    }

    #[test]
    fn claim_conditions_nested_lists_scopes_and_seed_style_keys() {
        let alice = identity(json!({
            "realm_access": {"roles": ["user", "admin"]},
            "resource_access": {"shop-backend": {"roles": ["reader"]}},
            "scope": "openid profile email",
            "preferred_username": "alice",
            "email_verified": true,
            "level": 3,
            "azp": "shop-web",
            "aud": ["shop", "account"],
            "https://example.com/group": "staff"
        }));
        let when = |key: &str, values: Value| {
            policies(json!({"policies": [{"rules": [{"when": [{"key": key, "values": values}]}]}]}))
        };
        let cases = [
            ("request.auth.claims[realm_access][roles]", json!(["admin"]), true),
            ("request.auth.claims[realm_access][roles]", json!(["root"]), false),
            ("request.auth.claims[realm_access.roles]", json!(["admin"]), true),
            ("request.auth.claims[resource_access][shop-backend][roles]", json!(["reader"]), true),
            ("request.auth.claims[scope]", json!(["email"]), true),
            ("request.auth.claims[scope]", json!(["openid profile email"]), false),
            ("request.auth.claims[preferred_username]", json!(["alice"]), true),
            ("request.auth.claims[preferred_username]", json!(["ali*"]), true),
            ("request.auth.claims[preferred_username]", json!(["bob"]), false),
            ("request.auth.claims[email_verified]", json!(["true"]), true),
            ("request.auth.claims[level]", json!(["3"]), true),
            ("request.auth.claims[missing]", json!(["*"]), false),
            ("request.auth.claims[realm_access]", json!(["*"]), false),
            ("request.auth.claims[https://example.com/group]", json!(["staff"]), true),
            ("request.auth.presenter", json!(["shop-web"]), true),
            ("request.auth.audiences", json!(["shop"]), true),
            ("request.auth.principal", json!(["https://idp/realms/shop/alice-id"]), true),
            ("request.headers[X-Env]", json!(["prod"]), true),
            ("request.headers[x-env]", json!(["dev"]), false),
        ];
        for (key, values, want) in cases {
            assert_eq!(allowed(&when(key, values.clone()), "GET", "/", Some(&alice)), want, "{key} {values}");
        }
        // Claims of an unauthenticated request are absent: values never match, notValues do.
        assert!(!allowed(&when("request.auth.claims[realm_access][roles]", json!(["*"])), "GET", "/", None));
        let not_admin = policies(
            json!({"policies": [{"rules": [{"when": [{"key": "request.auth.claims[realm_access][roles]", "notValues": ["admin"]}]}]}]}),
        );
        assert!(!allowed(&not_admin, "GET", "/", Some(&alice)));
        assert!(allowed(&not_admin, "GET", "/", None));
    }

    #[test]
    fn operations_with_negations() {
        let p = policies(
            json!({"policies": [{"rules": [{"to": [{"operation": {"paths": ["/api/*"], "notPaths": ["/api/internal/*"], "notMethods": ["DELETE"]}}]}]}]}),
        );
        assert!(allowed(&p, "GET", "/api/x", None));
        assert!(!allowed(&p, "GET", "/api/internal/x", None));
        assert!(!allowed(&p, "DELETE", "/api/x", None));
        assert!(!allowed(&p, "GET", "/other", None));
    }
}
