"""The shop configuration (testbed.config.shop_config) in real Envoy: what needs no token, the 401
challenge and its realm, 403 for authenticated callers the policies deny, the identity headers
forwarded to the backend, tokens from the IdP's own token endpoint, and several workers."""

import json

import pytest

from testbed.config import shop_config
from testbed.envoy import start_envoy
from testbed.expect import MISSING, bearer, expect_allowed, expect_forbidden, expect_missing
from testbed.tokens import b64url_decode, mint, sub, token_payload


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


def test_workers_share_the_configuration(idp, backend):
    with start_envoy(shop_config(idp), backend=backend, idp=idp, concurrency=4) as envoy:
        token = mint(idp, "alice")
        for _ in range(20):
            expect_allowed(envoy.get("/api/admin/users", bearer(token)))
