"""Where the filter looks for tokens in real Envoy: the Authorization header (any case of "Bearer"),
the access_token parameter, cookies, custom headers and parameters; every token found must be valid;
and forwarding the original token."""

import pytest

from testbed.config import shop_config
from testbed.envoy import start_envoy
from testbed.expect import FORM, bearer, expect_allowed, expect_missing, expect_rejected
from testbed.tokens import mint


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
