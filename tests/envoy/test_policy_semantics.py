"""AuthorizationPolicy semantics in real Envoy: requestPrincipals, paths (exact, prefix, suffix),
methods, several sources and operations, rules without "to", DENY before ALLOW, `when` conditions
on claims; and what no ALLOW policy, or no policy at all, means."""

import pytest

from testbed.config import ROLES_KEY, jwt_rule, operation, principals, when
from testbed.envoy import start_envoy
from testbed.expect import NO_EXP, bearer, expect_allowed, expect_forbidden, expect_missing, expect_rejected
from testbed.tokens import mint, sub


def policy_config(idp):
    """Focused rules, one per path, for the policy-semantics tests."""
    issuer = idp.issuer
    return {"jwtRules": [jwt_rule(idp)], "policies": [
        {"name": "deny-patch", "action": "DENY", "rules": [{"to": [operation(paths=["*"], methods=["PATCH"])]}]},
        {"name": "allow", "action": "ALLOW", "rules": [
            {"from": [principals(f"{issuer}/{sub('alice')}")], "to": [operation(paths=["/exact/alice"])]},
            {"from": [principals(f"{issuer}/*")], "to": [operation(paths=["/issuer-wide/*"])]},
            {"to": [operation(paths=["*.css"])]},
            {"to": [operation(paths=["/static/*"], methods=["GET", "HEAD"])]},
            {"from": [principals("https://other.example/*"), principals(f"{issuer}/{sub('bob')}")],
             "to": [operation(paths=["/either-source"])]},
            {"to": [operation(paths=["/one"]), operation(paths=["/two"])]},
            {"from": [principals(f"{issuer}/{sub('testuser')}")]},
            {"to": [operation(paths=["/claims/username"])],
             "when": [when("request.auth.claims[preferred_username]", "bob")]},
            {"to": [operation(paths=["/claims/scope"])], "when": [when("request.auth.claims[scope]", "email")]},
            {"to": [operation(paths=["/claims/reader"])],
             "when": [when("request.auth.claims[resource_access][shop-backend][roles]", "reader")]},
            {"to": [operation(paths=["/claims/seed"])], "when": [when("request.auth.claims[realm_access.roles]", "admin")]},
            {"to": [operation(paths=["/claims/all"])],
             "when": [when("request.auth.claims[preferred_username]", "alice"), when(ROLES_KEY, "admin")]},
            {"to": [operation(paths=["/claims/any-value"])], "when": [when(ROLES_KEY, "auditor", "admin")]},
        ]},
    ]}


@pytest.fixture(scope="module")
def policy_envoy(idp, backend):
    with start_envoy(policy_config(idp), backend=backend, idp=idp) as envoy:
        yield envoy


@pytest.mark.parametrize("who, method, path, outcome", [
    # requestPrincipals "<iss>/<sub>" and exact paths
    ("alice", "GET", "/exact/alice", 200),
    ("bob", "GET", "/exact/alice", 403),
    (None, "GET", "/exact/alice", 401),
    ("alice", "GET", "/exact/alice/more", 403),
    ("alice", "GET", "/exact/alicex", 403),
    # requestPrincipals "<iss>/*" and prefix paths
    ("bob", "GET", "/issuer-wide/x", 200),
    ("service", "GET", "/issuer-wide/a/b", 200),
    (None, "GET", "/issuer-wide/x", 401),
    # suffix paths
    (None, "GET", "/assets/site.css", 200),
    (None, "GET", "/assets/site.css.map", 401),
    # prefix paths with methods
    (None, "GET", "/static/app.js", 200),
    (None, "HEAD", "/static/app.js", 200),
    (None, "POST", "/static/app.js", 401),
    ("bob", "POST", "/static/app.js", 403),
    # one of several sources, one of several operations
    ("bob", "GET", "/either-source", 200),
    ("alice", "GET", "/either-source", 403),
    (None, "GET", "/one", 200),
    (None, "GET", "/two", 200),
    (None, "GET", "/three", 401),
    # a rule without "to" matches every operation
    ("testuser", "GET", "/anything/at/all", 200),
    ("testuser", "DELETE", "/orders/7", 200),
    ("bob", "GET", "/anything/at/all", 403),
    # DENY with path "*" comes first, also over rules that would allow
    ("testuser", "PATCH", "/anything", 403),
    ("alice", "PATCH", "/issuer-wide/x", 403),
    (None, "PATCH", "/one", 401),
    # when: string claim
    ("bob", "GET", "/claims/username", 200),
    ("alice", "GET", "/claims/username", 403),
    (None, "GET", "/claims/username", 401),
    # when: space-separated scope claim
    ("alice", "GET", "/claims/scope", 200),
    ("alice-reordered-scope", "GET", "/claims/scope", 200),
    ("alice-narrow-scope", "GET", "/claims/scope", 403),
    ("alice-email-lookalike", "GET", "/claims/scope", 403),
    ("alice-no-scope", "GET", "/claims/scope", 403),
    # when: nested client roles, from a real client_credentials token
    ("service", "GET", "/claims/reader", 200),
    ("alice", "GET", "/claims/reader", 403),
    # when: dotted ("seed-style") claim path
    ("alice", "GET", "/claims/seed", 200),
    ("bob", "GET", "/claims/seed", 403),
    # every when must match
    ("alice", "GET", "/claims/all", 200),
    ("alice-not-admin", "GET", "/claims/all", 403),
    ("bob-admin", "GET", "/claims/all", 403),
    # any of a when's values may match
    ("alice", "GET", "/claims/any-value", 200),
    ("bob-auditor", "GET", "/claims/any-value", 200),
    ("bob", "GET", "/claims/any-value", 403),
])
def test_policy_semantics(policy_envoy, tokens, who, method, path, outcome):
    headers = bearer(tokens[who]) if who else {}
    response = policy_envoy.get(path, headers, method=method)
    if outcome == 200:
        assert (response[0], response[1].get("x-backend")) == (200, "demo"), response
    elif outcome == 401:
        expect_missing(policy_envoy, response, path)
    else:
        expect_forbidden(policy_envoy, response, path)


def test_without_allow_policies_everything_not_denied_is_allowed(idp, backend):
    config = {"jwtRules": [jwt_rule(idp)],
              "policies": [{"name": "deny", "action": "DENY", "rules": [{"to": [operation(paths=["/blocked"])]}]}]}
    with start_envoy(config, backend=backend, idp=idp) as envoy:
        token = mint(idp, "bob")
        expect_allowed(envoy.get("/anything"))
        expect_allowed(envoy.get("/anything", bearer(token), method="DELETE"))
        expect_missing(envoy, envoy.get("/blocked"), "/blocked")
        expect_forbidden(envoy, envoy.get("/blocked", bearer(token)), "/blocked")
        expect_rejected(envoy, envoy.get("/anything", bearer(mint(idp, exp=None))), "/anything", NO_EXP)


def test_without_policies_everything_is_allowed(idp, backend):
    with start_envoy({"jwtRules": [jwt_rule(idp)]}, backend=backend, idp=idp) as envoy:
        expect_allowed(envoy.get("/anything", method="POST", body="{}"))
        echo = expect_allowed(envoy.get("/anything", bearer(mint(idp, "bob"))))
        assert echo["headers"]["x-user"] == "bob"
