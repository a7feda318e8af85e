"""Istio's translation of RequestAuthentication + AuthorizationPolicy into Envoy's native filters.

The differential test runs the same policies through jwt-authz and through Envoy's own jwt_authn and
rbac filters configured the way istiod configures them. This module is that translation, for the
subset of fields the test uses, written from what Istio generates (pilot/pkg/security/authz: the
"extended" generators that match JWT claims through jwt_authn's payload metadata, as on waypoints
and recent sidecars, and authn's jwt_authn provider settings). Anything else raises, so a policy
the translation cannot express is never silently approximated:

* jwtRules -> one jwt_authn provider each (payload in metadata under "payload"; scope and
  permission normalized to lists); no token is allowed (`allow_missing`), a bad one is 401.
* tokenRequirements -> jwt_authn route rules (ours; Istio's equivalent was the v1alpha1 trigger
  rules): skipValidation is a rule without `requires`, issuers a rule requiring those providers.
* AUDIT, DENY and ALLOW policies -> one rbac filter each (LOG, DENY, ALLOW); dry-run policies go to
  `shadow_rules`. Every rule is one RBAC policy: `to` operations -> permissions, `from` sources
  and `when` conditions -> principals (destination.port is a permission).
* hosts: Istio compares the raw authority, so `hosts: [h]` misses `h:port`; jwt-authz lets a
  port-less entry match any port. The translation writes what Istio's security bulletin
  ISTIO-SECURITY-2021-008 tells users to write for that: `h` and `h:*`. Only exact hosts.
"""

JWT_FILTER = "envoy.filters.http.jwt_authn"
PAYLOAD = "payload"
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
URI_TEMPLATE_TYPE = "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig"
MATCH_ANY = {"safe_regex": {"regex": ".+"}}


def string_matcher(value):
    """Istio's matcher.StringMatcher: * present (.+), *suffix, prefix*, exact."""
    if value == "*":
        return dict(MATCH_ANY)
    if value.startswith("*"):
        return {"suffix": value[1:]}
    if value.endswith("*"):
        return {"prefix": value[:-1]}
    return {"exact": value}


def header_matcher(name, value):
    if value == "*":
        return {"name": name, "present_match": True}
    return {"name": name, "string_match": string_matcher(value)}


def cidr(value):
    address, _, length = value.partition("/")
    return {"address_prefix": address, "prefix_len": int(length) if length else (128 if ":" in address else 32)}


def or_permissions(rules):
    return {"or_rules": {"rules": rules}}


def or_principals(ids):
    return {"or_ids": {"ids": ids}}


def claim_metadata(path, values):
    """Istio's MetadataListValueMatcherForJWTClaims: a string claim or a list element matches."""
    strings = [{"string_match": string_matcher(v)} for v in values]
    # Istio's StringOrMatcher: one value is a plain string match (or_match needs two).
    strings = strings[0] if len(strings) == 1 else {"or_match": {"value_matchers": strings}}
    return {"metadata": {
        "filter": JWT_FILTER,
        "path": [{"key": PAYLOAD}] + [{"key": segment} for segment in path],
        "value": {"or_match": {"value_matchers": [{"list_match": {"one_of": strings}}, strings]}},
    }}


def claim_string_metadata(claim, matcher):
    return {"metadata": {"filter": JWT_FILTER, "path": [{"key": PAYLOAD}, {"key": claim}],
                         "value": {"string_match": matcher}}}


def request_principal(value):
    """Istio's requestPrincipalGenerator: split at the last /, iss and sub matched as two claims."""
    iss, slash, sub = value.rpartition("/")
    found = bool(slash)
    if not found:
        iss, sub = value, ""
    if value == "*":
        match_iss, match_sub = MATCH_ANY, MATCH_ANY
    elif value.startswith("*"):
        if found:
            match_iss = MATCH_ANY if iss == "*" else {"suffix": iss[1:]}
            match_sub = {"exact": sub}
        else:
            match_iss, match_sub = MATCH_ANY, {"suffix": value[1:]}
    elif value.endswith("*"):
        if found:
            match_iss = {"exact": iss}
            match_sub = MATCH_ANY if sub == "*" else {"prefix": sub[:-1]}
        else:
            match_iss, match_sub = {"prefix": value[:-1]}, MATCH_ANY
    else:
        match_iss, match_sub = {"exact": iss}, {"exact": sub}
    return {"and_ids": {"ids": [claim_string_metadata("iss", match_iss), claim_string_metadata("sub", match_sub)]}}


def path_permission(value):
    if "{" in value:
        template = value.replace("{**}", "**").replace("{*}", "*")
        return {"uri_template": {"name": "uri-template", "typed_config": {
            "@type": URI_TEMPLATE_TYPE, "path_template": template}}}
    return {"url_path": {"path": string_matcher(value)}}


def host_permissions(value):
    if value == "*":
        return [{"header": {"name": ":authority", "present_match": True}}]
    if "*" in value or ":" in value:
        raise NotImplementedError(f"host {value!r}: the differential translation handles exact hosts only")
    return [
        {"header": {"name": ":authority", "string_match": {"exact": value, "ignore_case": True}}},
        {"header": {"name": ":authority", "string_match": {"prefix": value + ":", "ignore_case": True}}},
    ]


REGEX_SPECIAL = set(r"\.+*?()|[]{}^$")


def quote_meta(text):
    """Go's regexp.QuoteMeta, which Istio applies to the user's text before widening `*`."""
    return "".join(f"\\{c}" if c in REGEX_SPECIAL else c for c in text)


def authenticated(matcher):
    return {"authenticated": {"principal_name": matcher}}


def peer_principal(value):
    """Istio's srcPrincipalGenerator: the SPIFFE URI, with matcher.StringMatcherWithPrefix."""
    if value == "*":
        return [authenticated(dict(MATCH_ANY))]
    if value.startswith("*"):
        return [authenticated({"safe_regex": {"regex": "spiffe://.*" + quote_meta(value[1:])}})]
    if value.endswith("*"):
        return [authenticated({"prefix": "spiffe://" + value[:-1]})]
    return [authenticated({"exact": "spiffe://" + value})]


def peer_namespace(value):
    regex = ".*/ns/" + quote_meta(value).replace("\\*", ".*") + "/.*"
    return [authenticated({"safe_regex": {"regex": regex}})]


def peer_service_account(value):
    namespace, name = value.split("/", 1)
    regex = f"spiffe://.+/ns/{quote_meta(namespace)}/(.+/|)sa/{quote_meta(name)}(/.+)?"
    return [authenticated({"safe_regex": {"regex": regex}})]


def peer_trust_domain(value):
    if "*" not in value:
        return [authenticated({"prefix": f"spiffe://{value}/"})]
    regex = "spiffe://" + quote_meta(value).replace("\\*", "[^/]*") + "/.*"
    return [authenticated({"safe_regex": {"regex": regex}})]


PEER_FIELDS = {
    "principals": peer_principal,
    "namespaces": peer_namespace,
    "serviceAccounts": peer_service_account,
    "trustDomains": peer_trust_domain,
}


def values_and_not(values, not_values, make, either, negate):
    """Istio's rule.permission/principal: OR of values, NOT(OR of notValues)."""
    out = []
    if values:
        out.append(either([m for v in values for m in make(v)]))
    if not_values:
        out.append(negate(either([m for v in not_values for m in make(v)])))
    return out


def permission_parts(operation):
    permission_not = lambda p: {"not_rule": p}  # noqa: E731
    parts = []
    parts += values_and_not(operation.get("hosts"), operation.get("notHosts"), host_permissions,
                            or_permissions, permission_not)
    parts += values_and_not(operation.get("methods"), operation.get("notMethods"),
                            lambda v: [{"header": header_matcher(":method", v)}], or_permissions, permission_not)
    parts += values_and_not(operation.get("paths"), operation.get("notPaths"),
                            lambda v: [path_permission(v)], or_permissions, permission_not)
    parts += values_and_not(operation.get("ports"), operation.get("notPorts"),
                            lambda v: [{"destination_port": int(v)}], or_permissions, permission_not)
    unknown = set(operation) - {"hosts", "notHosts", "methods", "notMethods", "paths", "notPaths", "ports", "notPorts"}
    if unknown:
        raise NotImplementedError(f"operation fields {unknown}")
    return parts


def source_parts(source):
    principal_not = lambda p: {"not_id": p}  # noqa: E731
    parts = []
    parts += values_and_not(source.get("requestPrincipals"), source.get("notRequestPrincipals"),
                            lambda v: [request_principal(v)], or_principals, principal_not)
    parts += values_and_not(source.get("ipBlocks"), source.get("notIpBlocks"),
                            lambda v: [{"direct_remote_ip": cidr(v)}], or_principals, principal_not)
    parts += values_and_not(source.get("remoteIpBlocks"), source.get("notRemoteIpBlocks"),
                            lambda v: [{"remote_ip": cidr(v)}], or_principals, principal_not)
    for field, make in PEER_FIELDS.items():
        not_field = "not" + field[0].upper() + field[1:]
        parts += values_and_not(source.get(field), source.get(not_field), make, or_principals, principal_not)
    unknown = set(source) - {"requestPrincipals", "notRequestPrincipals", "ipBlocks", "notIpBlocks",
                             "remoteIpBlocks", "notRemoteIpBlocks"} - set(PEER_FIELDS) - {
        "not" + f[0].upper() + f[1:] for f in PEER_FIELDS}
    if unknown:
        raise NotImplementedError(f"source fields {unknown}")
    return parts


def condition_parts(condition):
    """A `when` condition: (permission parts, principal parts)."""
    key, values, not_values = condition["key"], condition.get("values"), condition.get("notValues")
    principal_not = lambda p: {"not_id": p}  # noqa: E731
    if key == "destination.port":
        return values_and_not(values, not_values, lambda v: [{"destination_port": int(v)}], or_permissions,
                              lambda p: {"not_rule": p}), []
    if key == "connection.sni":
        return values_and_not(values, not_values, lambda v: [{"requested_server_name": string_matcher(v)}],
                              or_permissions, lambda p: {"not_rule": p}), []
    if key == "destination.ip":
        return values_and_not(values, not_values, lambda v: [{"destination_ip": cidr(v)}], or_permissions,
                              lambda p: {"not_rule": p}), []
    if key == "source.principal":
        make = peer_principal
    elif key == "source.namespace":
        make = peer_namespace
    elif key == "source.ip":
        make = lambda v: [{"direct_remote_ip": cidr(v)}]  # noqa: E731
    elif key == "remote.ip":
        make = lambda v: [{"remote_ip": cidr(v)}]  # noqa: E731
    elif key == "request.auth.principal":
        make = lambda v: [request_principal(v)]  # noqa: E731
    elif key.startswith("request.headers[") and key.endswith("]"):
        name = key[len("request.headers["):-1]
        make = lambda v: [{"header": header_matcher(name, v)}]  # noqa: E731
    else:
        # Claims, audiences and presenter: one metadata matcher for all values, as Istio does.
        if key == "request.auth.audiences":
            path = ["aud"]
        elif key == "request.auth.presenter":
            path = ["azp"]
        elif key.startswith("request.auth.claims[") and key.endswith("]"):
            path = key[len("request.auth.claims["):-1].split("][")
        else:
            raise NotImplementedError(f"when key {key}")
        parts = []
        if values:
            parts.append(claim_metadata(path, values))
        if not_values:
            parts.append({"not_id": claim_metadata(path, not_values)})
        return [], parts
    return [], values_and_not(values, not_values, make, or_principals, principal_not)


def rbac_policy(rule):
    base_permissions, base_principals = [], []
    for condition in rule.get("when", []):
        permissions, principals = condition_parts(condition)
        base_permissions += permissions
        base_principals += principals
    permissions = [
        {"and_rules": {"rules": (permission_parts(to["operation"]) + base_permissions) or [{"any": True}]}}
        for to in rule.get("to", [])
    ] or [{"and_rules": {"rules": base_permissions or [{"any": True}]}}]
    principals = [
        {"and_ids": {"ids": (source_parts(frm["source"]) + base_principals) or [{"any": True}]}}
        for frm in rule.get("from", [])
    ] or [{"and_ids": {"ids": base_principals or [{"any": True}]}}]
    return {"permissions": permissions, "principals": principals}


def rbac_filter(action, policies):
    """One rbac filter for an action; dry-run policies become shadow rules, as Istio does."""
    enforced, shadow = {}, {}
    for index, policy in enumerate(policies):
        target = shadow if policy.get("dryRun") else enforced
        for number, rule in enumerate(policy.get("rules", [])):
            target[f"policy[{policy.get('name', index)}]-rule[{number}]"] = rbac_policy(rule)
    config = {"@type": RBAC_TYPE}
    # An ALLOW policy without rules still enables the ALLOW filter: it allows nothing.
    if enforced or (action == "ALLOW" and any(not p.get("dryRun") for p in policies)):
        config["rules"] = {"action": action, "policies": enforced}
    if shadow:
        config["shadow_rules"] = {"action": action, "policies": shadow}
        config["shadow_rules_stat_prefix"] = f"istio_dry_run_{action.lower()}_"
    return {"name": "envoy.filters.http.rbac", "typed_config": config}


def route_matches(match):
    """jwt_authn rule matches for a token requirement: one per path (and method)."""
    unknown = set(match) - {"paths", "methods"}
    if unknown:
        raise NotImplementedError(f"requirement match fields {unknown}")
    matches = []
    for path in match.get("paths", ["*"]):
        if "{" in path:
            route = {"path_match_policy": {"name": "envoy.path.match.uri_template.uri_template_matcher",
                                           "typed_config": {"@type": URI_TEMPLATE_TYPE,
                                                            "path_template": path.replace("{**}", "**").replace("{*}", "*")}}}
        elif path == "*":
            route = {"prefix": "/"}
        elif path.endswith("*"):
            route = {"prefix": path[:-1]}
        elif "*" in path:
            raise NotImplementedError(f"requirement path {path}")
        else:
            route = {"path": path}
        for method in match.get("methods") or [None]:
            with_method = dict(route)
            if method:
                with_method["headers"] = [{"name": ":method", "string_match": {"exact": method}}]
            matches.append(with_method)
    return matches


def jwt_authn_filter(config, clusters):
    """jwt_authn as Istio configures it for the jwtRules; clusters maps jwksUri to a cluster name."""
    providers = {}
    for index, rule in enumerate(config.get("jwtRules", [])):
        provider = {
            "issuer": rule["issuer"],
            "audiences": rule.get("audiences", []),
            "remote_jwks": {"http_uri": {"uri": rule["jwksUri"], "cluster": clusters[rule["jwksUri"]], "timeout": "5s"},
                            "cache_duration": "300s"},
            "forward": bool(rule.get("forwardOriginalToken")),
            "payload_in_metadata": PAYLOAD,
            "normalize_payload_in_metadata": {
                "space_delimited_claims": ["scope", "permission"] + config.get("spaceDelimitedClaims", [])},
        }
        if "fromHeaders" in rule or "fromParams" in rule or "fromCookies" in rule:
            provider["from_headers"] = [{"name": h["name"], "value_prefix": h.get("prefix", "")}
                                        for h in rule.get("fromHeaders", [])]
            provider["from_params"] = rule.get("fromParams", [])
            provider["from_cookies"] = rule.get("fromCookies", [])
        providers[f"origins-{index}"] = provider
    names = {rule["issuer"]: name for name, rule in zip(providers, config.get("jwtRules", []))}
    any_or_missing = {"requires_any": {"requirements": [{"provider_name": n} for n in providers] + [{"allow_missing": {}}]}}
    rules = []
    for requirement in config.get("tokenRequirements", []):
        for match in route_matches(requirement["match"]):
            rule = {"match": match}
            if not requirement.get("skipValidation"):
                required = [{"provider_name": names[issuer]} for issuer in requirement["issuers"]]
                rule["requires"] = required[0] if len(required) == 1 else {"requires_any": {"requirements": required}}
            rules.append(rule)
    rules.append({"match": {"prefix": "/"}, "requires": any_or_missing})
    return {"name": JWT_FILTER, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": providers,
        "rules": rules,
        # istiod sets it on every jwt_authn it writes: CORS preflights skip authentication.
        "bypass_cors_preflight": True,
    }}


def native_filters(config, clusters):
    """jwt_authn, then rbac LOG (AUDIT), DENY and ALLOW, as istiod orders them."""
    filters = [jwt_authn_filter(config, clusters)]
    by_action = {"AUDIT": [], "DENY": [], "ALLOW": []}
    for policy in config.get("policies", []):
        by_action[policy.get("action", "ALLOW")].append(policy)
    for action, rbac_action in (("AUDIT", "LOG"), ("DENY", "DENY"), ("ALLOW", "ALLOW")):
        if by_action[action]:
            filters.append(rbac_filter(rbac_action, by_action[action]))
    return filters
