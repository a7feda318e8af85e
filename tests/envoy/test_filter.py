"""Real-Envoy tests of the jwt-authz filter: token checks, authorization policies and configuration."""

import functools
import json
import socket
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from harness import DEFAULT_REALM, b64url, b64url_decode, mint, raw_token, start_envoy, token_payload, user_id

FORM = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
BASE64 = "Jwt is not correctly Base64url encoded"
JSON = "Jwt header or payload is not valid JSON"
ALG = "Jwt header [alg] is not allowed"
ISSUER = "Jwt issuer is not configured"
NO_EXP = "Jwt has no [exp] claim"
EXPIRED = "Jwt is expired"
NOT_YET = "Jwt not yet valid"
AUDIENCE = "Audiences in Jwt are not allowed"
KID = "Jwks doesn't have key to match kid or alg from Jwt"
VERIFY = "Jwt verification fails"
FETCH = "Jwks remote fetch is failed"
MISSING = "Jwt is missing"
DENIED = "RBAC: access denied"

ROLES_KEY = "request.auth.claims[realm_access][roles]"


# --- Configurations -------------------------------------------------------------------------------

def jwt_rule(idp, **changes):
    """The IdP's jwtRule; a change of None removes a field."""
    rule = {
        "issuer": idp.issuer,
        "audiences": ["shop"],
        "jwksUri": idp.jwks_uri,
        "jwksCluster": "idp",
        "outputPayloadToHeader": "x-jwt-payload",
        "outputClaimToHeaders": [{"header": "x-user", "claim": "preferred_username"}],
    }
    rule.update(changes)
    return {name: value for name, value in rule.items() if value is not None}


def principals(*values):
    return {"source": {"requestPrincipals": list(values)}}


def operation(paths=None, methods=None):
    fields = {"paths": paths, "methods": methods}
    return {"operation": {name: value for name, value in fields.items() if value is not None}}


def when(key, *values):
    return {"key": key, "values": list(values)}


def shop_policies():
    return [
        {"name": "deny-debug", "action": "DENY", "rules": [{"to": [operation(paths=["/debug*"])]}]},
        {"name": "shop", "action": "ALLOW", "rules": [
            {"to": [operation(paths=["/healthz"], methods=["GET"])]},
            {"from": [principals("*")], "to": [operation(paths=["/api/public/*"])]},
            {"from": [principals("*")], "to": [operation(paths=["/api/admin/*"])],
             "when": [when(ROLES_KEY, "admin")]},
        ]},
    ]


def shop_config(idp, **rule_changes):
    return {"jwtRules": [jwt_rule(idp, **rule_changes)], "policies": shop_policies()}


def sub(username):
    return user_id(DEFAULT_REALM["realm"], username)


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


# --- Requests and expectations ---------------------------------------------------------------------

def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def realm(envoy, path, host=None):
    return f'Bearer realm="http://{host or f"127.0.0.1:{envoy.port}"}{path}"'


def expect_missing(envoy, response, path):
    assert response[0::2] == (401, MISSING) and response[1].get("www-authenticate") == realm(envoy, path), response


def expect_rejected(envoy, response, path, message):
    challenge = f'{realm(envoy, path)}, error="invalid_token", error_description="{message}"'
    assert (response[0], response[1].get("www-authenticate"), response[2]) == (401, challenge, message), response


def expect_forbidden(envoy, response, path):
    challenge = f'{realm(envoy, path)}, error="insufficient_scope"'
    assert (response[0], response[1].get("www-authenticate"), response[2]) == (403, challenge, DENIED), response


def expect_allowed(response):
    """The backend's echo of an allowed request."""
    status, headers, body = response
    assert (status, headers.get("x-backend")) == (200, "demo"), response
    return json.loads(body)


@functools.lru_cache(maxsize=None)
def other_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- The shop configuration --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shop(idp, backend):
    with start_envoy(shop_config(idp), backend=backend, idp=idp) as envoy:
        yield envoy


def test_allowed_path_needs_no_token(shop):
    echo = expect_allowed(shop.get("/healthz"))
    assert echo["path"] == "/healthz"


def test_query_is_ignored_when_matching_paths(shop):
    expect_allowed(shop.get("/healthz?x=1"))


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/public/x"),
    ("POST", "/healthz"),
    ("GET", "/other"),
    ("GET", "/api/admin/users"),
    ("GET", "/debug/x"),
])
def test_denied_request_without_token_is_401(shop, method, path):
    expect_missing(shop, shop.get(path, method=method), path)


def test_challenge_realm_omits_the_query(shop):
    expect_missing(shop, shop.get("/api/public/x?a=b"), "/api/public/x")


def test_challenge_realm_uses_the_host_header(shop):
    status, headers, body = shop.get("/api/public/x", {"Host": "shop.example:8443"})
    assert (status, headers.get("www-authenticate"), body) == (
        401, 'Bearer realm="http://shop.example:8443/api/public/x"', MISSING)


def tampered(token):
    header, payload, signature = token.split(".")
    claims = json.loads(b64url_decode(payload))
    claims["preferred_username"] = "mallory"
    return f"{header}.{b64url(json.dumps(claims))}.{signature}"


def signature_of(token, signature):
    return token.rsplit(".", 1)[0] + "." + signature


def truncated_signature(token):
    signing_input, signature = token.rsplit(".", 1)
    return f"{signing_input}.{b64url(b64url_decode(signature)[:200])}"


def payload_of(idp):
    return token_payload(mint(idp))


BAD_TOKENS = {
    "one-part": (lambda idp: "abc", FORM),
    "two-parts": (lambda idp: mint(idp).rsplit(".", 1)[0], FORM),
    "four-parts": (lambda idp: mint(idp) + ".x", FORM),
    "header-not-base64url": (lambda idp: raw_token("e*J", payload_of(idp), b"sig"), BASE64),
    "payload-not-base64url": (lambda idp: raw_token({"alg": "RS256", "kid": idp.kid}, "ab$c", b"sig"), BASE64),
    "signature-not-base64url": (lambda idp: signature_of(mint(idp), "a*b"), BASE64),
    "header-not-json": (lambda idp: raw_token(b"not json", payload_of(idp), b"sig"), JSON),
    "header-json-string": (lambda idp: raw_token(b'"RS256"', payload_of(idp), b"sig"), JSON),
    "payload-not-json": (lambda idp: raw_token({"alg": "RS256", "kid": idp.kid}, b"{broken", b"sig"), JSON),
    "payload-json-array": (lambda idp: raw_token({"alg": "RS256", "kid": idp.kid}, [1, 2], b"sig"), JSON),
    "alg-none": (lambda idp: raw_token({"alg": "none", "typ": "JWT"}, payload_of(idp), b""), ALG),
    "alg-HS256": (lambda idp: mint(idp, header={"alg": "HS256"}), ALG),
    "alg-RS512": (lambda idp: mint(idp, header={"alg": "RS512"}), ALG),
    "alg-PS256": (lambda idp: mint(idp, header={"alg": "PS256"}), ALG),
    "alg-missing": (lambda idp: mint(idp, header={"alg": None}), ALG),
    "issuer-unknown": (lambda idp: mint(idp, iss="https://evil.example/realms/shop"), ISSUER),
    "issuer-missing": (lambda idp: mint(idp, iss=None), ISSUER),
    "exp-missing": (lambda idp: mint(idp, exp=None), NO_EXP),
    "expired": (lambda idp: mint(idp, exp=int(time.time()) - 120), EXPIRED),
    "not-yet-valid": (lambda idp: mint(idp, nbf=int(time.time()) + 120), NOT_YET),
    "aud-string-other": (lambda idp: mint(idp, aud="other"), AUDIENCE),
    "aud-list-other": (lambda idp: mint(idp, aud=["other", "account"]), AUDIENCE),
    "aud-missing": (lambda idp: mint(idp, aud=None), AUDIENCE),
    "kid-unknown": (lambda idp: mint(idp, header={"kid": "no-such-kid"}), KID),
    "kid-of-enc-key": (
        lambda idp: mint(idp, header={"kid": next(k["kid"] for k in idp.certs()["keys"] if k["use"] == "enc")}),
        KID),
    "signed-by-other-key": (lambda idp: mint(idp, key=other_key()), VERIFY),
    "payload-tampered": (lambda idp: tampered(mint(idp)), VERIFY),
    "signature-truncated": (lambda idp: truncated_signature(mint(idp)), VERIFY),
}


@pytest.mark.parametrize("path", ["/healthz", "/api/public/x"])
@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_rejected_token_is_401_whatever_the_policy(shop, idp, case, path):
    make_token, message = BAD_TOKENS[case]
    expect_rejected(shop, shop.get(path, bearer(make_token(idp))), path, message)


@pytest.mark.parametrize("claim, offset", [("exp", -30), ("nbf", 30)])
def test_clock_skew_of_60_seconds_is_tolerated(shop, idp, claim, offset):
    token = mint(idp, "bob", **{claim: int(time.time()) + offset})
    expect_allowed(shop.get("/api/public/x", bearer(token)))


@pytest.mark.parametrize("aud", ["shop", ["account", "shop"]], ids=["string", "list"])
def test_audience_may_be_a_string_or_a_list(shop, idp, aud):
    expect_allowed(shop.get("/api/public/x", bearer(mint(idp, "bob", aud=aud))))


@pytest.mark.parametrize("user, method, path", [
    ("bob", "GET", "/api/admin/x"),
    ("alice", "GET", "/debug/x"),
    ("alice", "GET", "/debugger"),
    ("bob", "GET", "/debug/info"),
    ("alice", "GET", "/other-path"),
    ("alice", "POST", "/healthz"),
])
def test_authenticated_but_denied_is_403(shop, idp, user, method, path):
    expect_forbidden(shop, shop.get(path, bearer(mint(idp, user)), method=method), path)


def test_admin_reaches_admin_api_with_identity_headers(shop, idp):
    token = mint(idp, "alice")
    echo = expect_allowed(shop.get("/api/admin/users", bearer(token)))
    assert "authorization" not in echo["headers"]
    assert echo["headers"]["x-user"] == "alice"
    forwarded_payload = echo["headers"]["x-jwt-payload"]
    assert "=" not in forwarded_payload
    assert json.loads(b64url_decode(forwarded_payload)) == token_payload(token)


def test_user_reaches_public_api(shop, idp):
    echo = expect_allowed(shop.get("/api/public/x", bearer(mint(idp, "bob"))))
    assert echo["headers"]["x-user"] == "bob"
    assert json.loads(b64url_decode(echo["headers"]["x-jwt-payload"]))["sub"] == sub("bob")


def test_tokens_from_the_idp_token_endpoint(shop, idp):
    alice = idp.password_token("alice", "alice")
    bob = idp.password_token("bob", "bob")
    service = idp.client_credentials_token()
    expect_allowed(shop.get("/api/admin/users", bearer(alice)))
    expect_forbidden(shop, shop.get("/api/admin/users", bearer(bob)), "/api/admin/users")
    echo = expect_allowed(shop.get("/api/public/x", bearer(service)))
    assert echo["headers"]["x-user"] == "service-account-shop-backend"


def test_token_from_access_token_query_parameter(shop, idp):
    echo = expect_allowed(shop.get(f"/api/public/x?access_token={mint(idp, 'bob')}"))
    assert echo["headers"]["x-user"] == "bob"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_bearer_prefix_is_case_insensitive(shop, idp, scheme):
    expect_allowed(shop.get("/api/public/x", {"Authorization": f"{scheme} {mint(idp, 'bob')}"}))


def test_other_authorization_schemes_carry_no_token(shop):
    basic = {"Authorization": "Basic Ym9iOmJvYg=="}
    expect_missing(shop, shop.get("/api/public/x", basic), "/api/public/x")
    expect_allowed(shop.get("/healthz", basic))


def test_every_token_found_must_be_valid_and_the_header_one_is_the_identity(shop, idp):
    path = "/api/public/x"
    both_valid = shop.get(f"{path}?access_token={mint(idp, 'alice')}", bearer(mint(idp, "bob")))
    assert expect_allowed(both_valid)["headers"]["x-user"] == "bob"
    expect_rejected(shop, shop.get(f"{path}?access_token=garbage", bearer(mint(idp, "bob"))), path, FORM)


# --- Token locations and forwarding ------------------------------------------------------------------

def test_forward_original_token_keeps_the_authorization_header(idp, backend):
    config = shop_config(idp, forwardOriginalToken=True)
    with start_envoy(config, backend=backend, idp=idp) as envoy:
        token = mint(idp, "bob")
        echo = expect_allowed(envoy.get("/api/public/x", bearer(token)))
        assert echo["headers"]["authorization"] == f"Bearer {token}"


def test_token_from_cookie_only(idp, backend):
    config = shop_config(idp, fromCookies=["session"])
    with start_envoy(config, backend=backend, idp=idp) as envoy:
        token = mint(idp, "bob")
        path = "/api/public/x"
        assert expect_allowed(envoy.get(path, {"Cookie": f"session={token}"}))["headers"]["x-user"] == "bob"
        expect_allowed(envoy.get(path, {"Cookie": f"theme=dark; session={token}; lang=en"}))
        expect_missing(envoy, envoy.get(path, bearer(token)), path)
        expect_missing(envoy, envoy.get(f"{path}?access_token={token}"), path)
        expect_missing(envoy, envoy.get(path, {"Cookie": f"other={token}"}), path)


def test_token_from_custom_header_and_parameter_only(idp, backend):
    config = shop_config(idp, fromHeaders=[{"name": "x-api-token", "prefix": "Token "}], fromParams=["tok"])
    with start_envoy(config, backend=backend, idp=idp) as envoy:
        token = mint(idp, "bob")
        path = "/api/public/x"
        expect_allowed(envoy.get(path, {"X-Api-Token": f"Token {token}"}))
        expect_allowed(envoy.get(f"{path}?tok={token}"))
        expect_missing(envoy, envoy.get(path, bearer(token)), path)
        expect_missing(envoy, envoy.get(f"{path}?access_token={token}"), path)


# --- Policy semantics ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def policy_envoy(idp, backend):
    with start_envoy(policy_config(idp), backend=backend, idp=idp) as envoy:
        yield envoy


@pytest.fixture(scope="module")
def tokens(idp):
    return {
        "alice": mint(idp, "alice"),
        "bob": mint(idp, "bob"),
        "testuser": mint(idp, "testuser"),
        "service": idp.client_credentials_token(),
        "alice-narrow-scope": mint(idp, "alice", scope="openid profile"),
        "alice-reordered-scope": mint(idp, "alice", scope="profile email openid"),
        "alice-email-lookalike": mint(idp, "alice", scope="openid email-extra profile"),
        "alice-no-scope": mint(idp, "alice", scope=None),
        "alice-not-admin": mint(idp, "alice", realm_access={"roles": ["user"]}),
        "bob-admin": mint(idp, "bob", realm_access={"roles": ["user", "admin"]}),
        "bob-auditor": mint(idp, "bob", realm_access={"roles": ["user", "auditor"]}),
    }


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


def test_workers_share_the_configuration(idp, backend):
    with start_envoy(shop_config(idp), backend=backend, idp=idp, concurrency=4) as envoy:
        token = mint(idp, "alice")
        for _ in range(20):
            expect_allowed(envoy.get("/api/admin/users", bearer(token)))


# --- JWKS sources -------------------------------------------------------------------------------------

def test_unreachable_jwks_rejects_tokens(idp, backend):
    config = shop_config(idp, jwksCluster="dead")
    with start_envoy(config, backend=backend, idp=idp, clusters={"dead": free_port()}) as envoy:
        for path in ("/api/public/x", "/healthz"):
            expect_rejected(envoy, envoy.get(path, bearer(mint(idp, "bob"))), path, FETCH)
        expect_allowed(envoy.get("/healthz"))


def test_failing_jwks_endpoint_rejects_tokens(idp, backend):
    idp.certs_mode(status=500)
    before = idp.hits()["certs"]
    with start_envoy(shop_config(idp), backend=backend, idp=idp) as envoy:
        expect_rejected(envoy, envoy.get("/api/public/x", bearer(mint(idp, "bob"))), "/api/public/x", FETCH)
        assert idp.hits()["certs"] > before


WAITED = "wasmcustom.jwt_authz.requests_waited_for_keys"


def test_requests_wait_for_a_slow_first_fetch_and_resume(idp, backend):
    # The IdP answers the first certs request after 1.5 s: a request arriving meanwhile is parked,
    # not rejected, and resumes with the keys (the counter proves it waited rather than raced).
    idp.certs_mode(delay=1.5)
    with start_envoy(shop_config(idp), backend=backend, idp=idp) as envoy:
        echo = expect_allowed(envoy.get("/api/public/x", bearer(mint(idp, "bob"))))
        assert echo["headers"]["x-user"] == "bob"
        assert envoy.stats().get(WAITED) == 1
        expect_allowed(envoy.get("/api/public/x", bearer(mint(idp, "bob"))))
        assert envoy.stats().get(WAITED) == 1


def test_waiting_requests_get_401_when_the_first_fetch_times_out(idp, backend):
    idp.certs_mode(delay=3)
    with start_envoy(shop_config(idp, timeout="500ms"), backend=backend, idp=idp) as envoy:
        expect_rejected(envoy, envoy.get("/api/public/x", bearer(mint(idp, "bob"))), "/api/public/x", FETCH)
        assert envoy.stats().get(WAITED) == 1
        # Requests that need no keys are never held up.
        expect_allowed(envoy.get("/healthz"))


def test_default_jwks_cluster_name_is_derived_from_the_uri(idp, backend):
    cluster = f"outbound|{idp.port}||127.0.0.1"
    config = shop_config(idp, jwksCluster=None)
    with start_envoy(config, backend=backend, clusters={cluster: idp.port}) as envoy:
        expect_allowed(envoy.get("/api/public/x", bearer(mint(idp, "bob"))))


def test_inline_jwks_needs_no_fetch(idp, backend):
    config = shop_config(idp, jwksUri=None, jwksCluster=None, jwks=idp.certs_text())
    before = idp.hits()["certs"]
    with start_envoy(config, backend=backend) as envoy:
        expect_allowed(envoy.get("/api/public/x", bearer(mint(idp, "bob"))))
        expect_rejected(envoy, envoy.get("/api/public/x", bearer(mint(idp, key=other_key()))),
                        "/api/public/x", VERIFY)
    assert idp.hits()["certs"] == before


# --- Path normalization by the filter ------------------------------------------------------------------

@pytest.fixture(scope="module")
def raw_path_envoy(idp, backend):
    """Envoy that leaves paths alone, so normalization is the filter's."""
    with start_envoy(shop_config(idp), backend=backend, idp=idp, normalize_path=False) as envoy:
        yield envoy


@pytest.mark.parametrize("who, path, outcome", [
    ("bob", "/api/admin/../public/x", 200),
    ("bob", "/api/public/./x", 200),
    (None, "/x/../healthz", 200),
    ("bob", "/api/public/../admin/x", 403),
    ("alice", "/api/public/../../debug/x", 403),
])
def test_paths_are_normalized_before_matching(raw_path_envoy, tokens, who, path, outcome):
    response = raw_path_envoy.get(path, bearer(tokens[who]) if who else {})
    if outcome == 200:
        expect_allowed(response)
    else:
        assert (response[0], response[2]) == (403, DENIED), response


@pytest.mark.parametrize("who, path", [(None, "/healthz%00"), ("bob", "/api%2Fadmin/x")])
def test_unsafe_paths_are_400(raw_path_envoy, tokens, who, path):
    response = raw_path_envoy.get(path, bearer(tokens[who]) if who else {})
    assert response[0] == 400, response


# --- Invalid configuration -------------------------------------------------------------------------------

def expect_refused(envoy, fragments):
    """Envoy exited, or kept running without serving through the broken filter; its log says why."""
    log = envoy.log_text()
    for fragment in fragments:
        assert fragment in log, f"{fragment!r} not in log of {envoy!r}"
    if envoy.exit_code is None and envoy.port is not None:
        status = envoy.get("/healthz")[0]
        assert status >= 500, f"broken config still served /healthz with {status}"
    elif envoy.exit_code is not None:
        assert envoy.exit_code != 0


@pytest.mark.parametrize("config, fragments", [
    ({"jwtRules": [{"issuer": "", "jwksUri": "http://x/certs"}]}, ["jwtRules[0].issuer", "empty"]),
    ({"policies": [{"name": "p", "action": "MAYBE"}]}, ["policies[0].action", "MAYBE"]),
    ({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "bogus": 1}]}, ["bogus", "unknown field"]),
    ("{not json", ["line 1 column 2"]),
], ids=["empty-issuer", "unknown-action", "unknown-field", "not-json"])
def test_invalid_configuration_is_refused(backend, config, fragments):
    with start_envoy(config, backend=backend, expect_failure=True) as envoy:
        expect_refused(envoy, fragments)
