"""Differential test: the same policies and the same requests through jwt-authz and through Envoy's
native jwt_authn + rbac filters configured the way Istio translates them (testbed/istio.py).

Decisions must be identical, with one documented exception: a request denied without a valid
identity is 401 "Jwt is missing" from jwt-authz where Envoy's rbac answers 403. Both Envoys run
Istio's gateway settings for X-Forwarded-For (use_remote_address with one trusted proxy), and
native Envoy path normalization with merged slashes; jwt-authz's Envoy runs with normalization off,
so its own normalization is compared. source.ip (the TCP peer, which Envoy does not show a Wasm
filter behind trusted proxies) is compared in test_addresses.py, under each connection-manager
setting.
"""

import pytest

from testbed.config import jwt_rule
from testbed.envoy import start_envoy
from testbed.expect import bearer
from testbed.istio import native_filters
from testbed.net import free_ports
from testbed.tokens import mint, sub


def policy_config(idp, main_ports):
    iss = idp.issuer
    ports = [str(port) for port in main_ports]
    return {
        "jwtRules": [jwt_rule(idp)],
        "tokenRequirements": [
            {"name": "probes", "match": {"paths": ["/healthz"], "methods": ["GET"]}, "skipValidation": True},
            {"name": "reports", "match": {"paths": ["/reports/*"]}, "issuers": [iss]},
        ],
        "policies": [
            {"name": "audit-admin", "action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}]},
            {"name": "deny-debug", "action": "DENY", "rules": [
                {"to": [{"operation": {"paths": ["/debug/*", "*.bak"]}}]},
                {"to": [{"operation": {"methods": ["TRACE"]}}]},
            ]},
            {"name": "deny-blocked", "action": "DENY", "rules": [
                {"when": [{"key": "request.headers[x-block]", "values": ["yes", "true*"]}]}]},
            # `*` on a header is presence: an empty value is present (Istio's present_match).
            {"name": "deny-debug-header", "action": "DENY", "rules": [
                {"when": [{"key": "request.headers[x-debug]", "values": ["*"]}]}]},
            # Templates match what Envoy's uri_template matches: `=`, `*` and sub-delims included.
            {"name": "deny-locked", "action": "DENY", "rules": [
                {"to": [{"operation": {"paths": ["/public/locked/{*}", "/public/tree/{**}/end", "/public/files/{*}.txt"]}}]}]},
            {"name": "trial-deny-deletes", "action": "DENY", "dryRun": True, "rules": [
                {"to": [{"operation": {"methods": ["DELETE"]}}]}]},
            {"name": "shop", "action": "ALLOW", "rules": [
                {"to": [{"operation": {"paths": ["/healthz"], "methods": ["GET"]}}]},
                {"to": [{"operation": {"paths": ["/public/*", "*.css"], "notPaths": ["/public/internal/*"]}}]},
                {"from": [{"source": {"requestPrincipals": [f"{iss}/*"]}}],
                 "to": [{"operation": {"paths": ["/api/*"], "notMethods": ["DELETE"]}}]},
                {"from": [{"source": {"requestPrincipals": [f"{iss}/{sub('alice')}"]}}],
                 "to": [{"operation": {"paths": ["/api/*"]}}]},
                {"to": [{"operation": {"paths": ["/admin/*"]}}],
                 "when": [{"key": "request.auth.claims[realm_access][roles]", "values": ["admin"]}]},
                {"to": [{"operation": {"paths": ["/scoped/*"]}}],
                 "when": [{"key": "request.auth.claims[scope]", "values": ["email"]},
                          {"key": "request.auth.audiences", "values": ["shop"]}]},
                {"to": [{"operation": {"paths": ["/presenter"]}}],
                 "when": [{"key": "request.auth.presenter", "values": ["shop-w*"]}]},
                {"from": [{"source": {"requestPrincipals": ["*"]}}],
                 "to": [{"operation": {"paths": ["/orders/{*}/items", "/files/{**}"]}}]},
                {"to": [{"operation": {"hosts": ["shop.example"], "paths": ["/by-host"]}}]},
                {"to": [{"operation": {"notHosts": ["internal.example"], "paths": ["/not-internal"]}}]},
                {"to": [{"operation": {"ports": ports, "paths": ["/main-port-only"]}}]},
                {"to": [{"operation": {"notPorts": ports, "paths": ["/alt-port-only"]}}]},
                {"to": [{"operation": {"paths": ["/port-condition"]}}],
                 "when": [{"key": "destination.port", "notValues": ports}]},
                {"from": [{"source": {"remoteIpBlocks": ["198.51.100.0/24"]}}],
                 "to": [{"operation": {"paths": ["/office/*"]}}]},
                {"from": [{"source": {"notRequestPrincipals": ["*"]}}],
                 "to": [{"operation": {"paths": ["/anonymous-only"]}}]},
                {"to": [{"operation": {"paths": ["/claims/*"]}}],
                 "when": [{"key": "request.auth.claims[preferred_username]", "notValues": ["bob"]},
                          {"key": "request.auth.principal", "values": [f"{iss}/*"]}]},
                {"to": [{"operation": {"paths": ["/reports/*"]}}]},
                {"to": [{"operation": {"paths": ["/env/*"]}}],
                 "when": [{"key": "request.headers[x-env]", "values": ["prod", "stag*"], "notValues": ["*-old"]}]},
            ]},
        ],
    }


@pytest.fixture(scope="module")
def ports():
    ours_main, ours_alt, native_main, native_alt = free_ports(4)
    return {"ours": {"ingress": ours_main, "alt": ours_alt}, "native": {"ingress": native_main, "alt": native_alt}}


@pytest.fixture(scope="module")
def config(idp, ports):
    return policy_config(idp, [ports["ours"]["ingress"], ports["native"]["ingress"]])


@pytest.fixture(scope="module")
def ours(idp, backend, config, ports):
    with start_envoy(config, backend=backend, idp=idp, normalize_path=False, listeners=ports["ours"],
                     use_remote_address=True, xff_num_trusted_hops=1) as envoy:
        yield envoy


@pytest.fixture(scope="module")
def native(idp, backend, config, ports):
    filters = native_filters(config, {idp.jwks_uri: "idp"})
    with start_envoy(None, backend=backend, idp=idp, filters=filters, listeners=ports["native"],
                     normalize_path=True, merge_slashes=True, use_remote_address=True,
                     xff_num_trusted_hops=1) as envoy:
        yield envoy


@pytest.fixture(scope="module")
def tokens(idp):
    return {
        "alice": mint(idp, "alice"),
        "bob": mint(idp, "bob"),
        "service": idp.client_credentials_token(),
        "narrow": mint(idp, "bob", scope="openid profile"),
        "other-aud": mint(idp, "alice", aud="account"),
        "expired": mint(idp, "alice", exp=1_000_000_000),
        "cli": mint(idp, "bob", azp="cli"),
    }


# (method, path, who, extra headers, listener)
PREFLIGHT = {"Origin": "https://shop.example", "Access-Control-Request-Method": "DELETE"}

REQUESTS = [
    ("GET", "/healthz", None, {}, "ingress"),
    ("GET", "/healthz", "garbage", {}, "ingress"),
    ("POST", "/healthz", None, {}, "ingress"),
    ("POST", "/healthz", "garbage", {}, "ingress"),
    ("GET", "/public/x", None, {}, "ingress"),
    ("GET", "/public/internal/x", None, {}, "ingress"),
    ("GET", "/public/internal/x", "alice", {}, "ingress"),
    ("GET", "/assets/site.css", None, {}, "ingress"),
    ("GET", "/public/../api/x", None, {}, "ingress"),
    ("GET", "//public//x", None, {}, "ingress"),
    ("GET", "/api/x", None, {}, "ingress"),
    ("GET", "/api/x", "bob", {}, "ingress"),
    ("GET", "/api/x", "service", {}, "ingress"),
    ("DELETE", "/api/x", "bob", {}, "ingress"),
    ("DELETE", "/api/x", "alice", {}, "ingress"),
    ("GET", "/api/x", "expired", {}, "ingress"),
    ("GET", "/api/x", "other-aud", {}, "ingress"),
    ("GET", "/admin/users", "alice", {}, "ingress"),
    ("GET", "/admin/users", "bob", {}, "ingress"),
    ("GET", "/admin/users", None, {}, "ingress"),
    ("GET", "/debug/vars", "alice", {}, "ingress"),
    ("GET", "/debug/vars", None, {}, "ingress"),
    ("GET", "/public/db.bak", None, {}, "ingress"),
    ("TRACE", "/public/x", None, {}, "ingress"),
    ("GET", "/public/x", None, {"x-block": "yes"}, "ingress"),
    ("GET", "/public/x", None, {"x-block": "truely"}, "ingress"),
    ("GET", "/public/x", None, {"x-block": "no"}, "ingress"),
    ("GET", "/scoped/x", "alice", {}, "ingress"),
    ("GET", "/scoped/x", "narrow", {}, "ingress"),
    ("GET", "/scoped/x", None, {}, "ingress"),
    ("GET", "/presenter", "bob", {}, "ingress"),
    ("GET", "/presenter", "service", {}, "ingress"),
    ("GET", "/presenter", "cli", {}, "ingress"),
    ("GET", "/orders/7/items", "bob", {}, "ingress"),
    ("GET", "/orders/7/8/items", "bob", {}, "ingress"),
    ("GET", "/orders/7/items", None, {}, "ingress"),
    ("GET", "/files/", "bob", {}, "ingress"),
    ("GET", "/files/a/b", "bob", {}, "ingress"),
    ("GET", "/files", "bob", {}, "ingress"),
    ("GET", "/by-host", None, {"Host": "shop.example"}, "ingress"),
    ("GET", "/by-host", None, {"Host": "SHOP.Example"}, "ingress"),
    ("GET", "/by-host", None, {"Host": "shop.example:8443"}, "ingress"),
    ("GET", "/by-host", None, {"Host": "shop.example.evil"}, "ingress"),
    ("GET", "/by-host", "bob", {"Host": "other.example"}, "ingress"),
    ("GET", "/not-internal", None, {"Host": "shop.example"}, "ingress"),
    ("GET", "/not-internal", None, {"Host": "Internal.Example"}, "ingress"),
    ("GET", "/not-internal", None, {"Host": "internal.example:80"}, "ingress"),
    ("GET", "/main-port-only", None, {}, "ingress"),
    ("GET", "/main-port-only", None, {}, "alt"),
    ("GET", "/alt-port-only", None, {}, "ingress"),
    ("GET", "/alt-port-only", None, {}, "alt"),
    ("GET", "/port-condition", None, {}, "ingress"),
    ("GET", "/port-condition", None, {}, "alt"),
    ("GET", "/office/x", None, {"X-Forwarded-For": "198.51.100.4"}, "ingress"),
    ("GET", "/office/x", None, {"X-Forwarded-For": "203.0.113.9, 198.51.100.4"}, "ingress"),
    ("GET", "/office/x", None, {"X-Forwarded-For": "198.51.100.4, 203.0.113.9"}, "ingress"),
    ("GET", "/office/x", "bob", {"X-Forwarded-For": "203.0.113.9"}, "ingress"),
    ("GET", "/anonymous-only", None, {}, "ingress"),
    ("GET", "/anonymous-only", "bob", {}, "ingress"),
    ("GET", "/claims/x", "alice", {}, "ingress"),
    ("GET", "/claims/x", "bob", {}, "ingress"),
    ("GET", "/claims/x", None, {}, "ingress"),
    ("GET", "/reports/q1", None, {}, "ingress"),
    ("GET", "/reports/q1", "bob", {}, "ingress"),
    ("GET", "/reports/q1?access_token=garbage", None, {}, "ingress"),
    ("GET", "/env/x", None, {"x-env": "prod"}, "ingress"),
    ("GET", "/env/x", None, {"x-env": "staging"}, "ingress"),
    ("GET", "/env/x", None, {"x-env": "staging-old"}, "ingress"),
    ("GET", "/env/x", None, {"x-env": "dev"}, "ingress"),
    ("GET", "/env/x", None, {}, "ingress"),
    ("GET", "/public/x", None, {"x-debug": ""}, "ingress"),
    ("GET", "/public/x", None, {"x-debug": "1"}, "ingress"),
    ("GET", "/public/x", "alice", {"x-debug": ""}, "ingress"),
    *[("GET", f"/public/locked/{segment}", who, {}, "ingress") for who in [None, "alice"]
      for segment in ["a", "a=b", "a*b", "=", "*", "a:b@c", "a!b$c&d'e", "a(b)c+d,e;f~g", "a%20b", "a%3Db",
                      'a"b', "a|b", "a^b", "a`b", "a{b}", "a<b>", "a[b]"]],
    ("GET", "/public/locked/a/b", None, {}, "ingress"),
    ("GET", "/public/tree/a=b/c*d/end", None, {}, "ingress"),
    ("GET", "/public/tree/end", None, {}, "ingress"),
    ("GET", "/public/tree/x/end/more", None, {}, "ingress"),
    ("GET", "/public/files/a=b.txt", None, {}, "ingress"),
    ("GET", "/public/files/*.txt", None, {}, "ingress"),
    ("GET", "/public/files/a.txt.bak2", None, {}, "ingress"),
    ("GET", "/nothing-allows-this", "alice", {}, "ingress"),
    ("GET", "/nothing-allows-this", None, {}, "ingress"),
    # CORS preflights skip authentication (istiod's bypass_cors_preflight; jwt-authz's default),
    # even where a token requirement needs one, and even with a broken token; the policies still
    # decide. OPTIONS without both headers, or with an empty one, is not a preflight.
    ("OPTIONS", "/reports/x", None, PREFLIGHT, "ingress"),
    ("OPTIONS", "/reports/x", "garbage", PREFLIGHT, "ingress"),
    ("OPTIONS", "/reports/x", None, {"Origin": "https://shop.example"}, "ingress"),
    ("OPTIONS", "/reports/x", None, {"Origin": "", "Access-Control-Request-Method": "PUT"}, "ingress"),
    ("OPTIONS", "/api/x", None, PREFLIGHT, "ingress"),
    ("OPTIONS", "/public/x", None, PREFLIGHT, "ingress"),
]


def send(envoy, tokens, method, path, who, headers, listener):
    headers = dict(headers)
    if who == "garbage":
        headers["Authorization"] = "Bearer not-a-jwt"
    elif who:
        headers.update(bearer(tokens[who]))
    status, response_headers, body = envoy.get(path, headers, method=method, listener=listener)
    if status == 200:
        assert response_headers.get("x-backend") == "demo", (status, response_headers, body)
    return status, body


@pytest.mark.parametrize("method, path, who, headers, listener", REQUESTS,
                         ids=[f"{m} {p} {w or '-'} {h or ''} {l}" for m, p, w, h, l in REQUESTS])
def test_same_decision_as_istio_native_filters(ours, native, tokens, method, path, who, headers, listener):
    our_status, our_body = send(ours, tokens, method, path, who, headers, listener)
    native_status, native_body = send(native, tokens, method, path, who, headers, listener)
    outcome = (our_status, our_body, native_status, native_body)
    if our_status == 401 and native_status == 403:
        # The documented difference: a request denied without a valid identity is a 401 challenge
        # here. Envoy's rbac answers 403 to a request without a token, and its jwt_authn answers
        # 403 to a token for another audience (RFC 6750 makes that an invalid_token, 401).
        assert (our_body, native_body) in {
            ("Jwt is missing", "RBAC: access denied"),
            ("Audiences in Jwt are not allowed", "Audiences in Jwt are not allowed"),
        }, outcome
    else:
        assert our_status == native_status, outcome
        if our_status == 401:
            # Same rejection: jwt_authn's messages are the ones jwt-authz uses.
            assert our_body == native_body, outcome


def test_the_table_exercises_every_outcome(ours, tokens):
    """Guard against a table that compares nothing: allowed, 401 and 403 must all occur."""
    outcomes = {send(ours, tokens, *request)[0] for request in REQUESTS}
    assert {200, 401, 403} <= outcomes, outcomes


def dry_run_denials(ours, native):
    native_count = native.stats().get("http.ingress.rbac.istio_dry_run_deny_.shadow_denied", 0)
    our_count = [v for k, v in ours.stats().items() if k.endswith("jwt_authz.dry_run_denied_total")]
    assert len(our_count) == 1
    return our_count[0], native_count


def test_dry_run_changes_no_decision_on_either_side(ours, native, tokens):
    """The dry-run DENY on DELETE is enforced by neither; both count what it would have denied."""
    ours_before, native_before = dry_run_denials(ours, native)
    assert send(ours, tokens, "DELETE", "/api/x", "alice", {}, "ingress")[0] == 200
    assert send(native, tokens, "DELETE", "/api/x", "alice", {}, "ingress")[0] == 200
    assert dry_run_denials(ours, native) == (ours_before + 1, native_before + 1)
