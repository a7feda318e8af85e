"""The validation knobs of a `jwtRules` entry in real Envoy, with tokens minted by the test bed
(python `cryptography`) and keys fetched from the dev IdP's JWKS endpoint: `clockSkew`,
`requireExpiration`, `maxLifetime` and `requiredClaims`, each with its own 401 message and reason
code, and the defaults they leave (60 s skew, `exp` required, no lifetime bound, no required
claim). A verified token is cached: the cached path must keep every refusal (the same token is
sent twice)."""

import time

import pytest

from testbed.config import shop_config
from testbed.envoy import start_envoy
from testbed.expect import EXPIRED, NO_EXP, NOT_YET, bearer, denial_reason, expect_allowed, expect_rejected
from testbed.tokens import mint

LIFETIME = "Jwt lifetime is longer than allowed"
REQUIRED = "Jwt claims do not have the required values"
PATH = "/api/public/x"


@pytest.fixture(scope="module")
def strict(idp, backend):
    """No clock skew, an hour at most from iat to exp, and Keycloak's access-token claims required."""
    config = shop_config(idp, clockSkew="0s", maxLifetime="1h",
                         requiredClaims={"typ": ["Bearer"], "realm_access.roles": ["user"]})
    with start_envoy(config, backend=backend, idp=idp) as envoy:
        yield envoy


@pytest.fixture(scope="module")
def lenient(idp, backend):
    """Tokens without exp accepted (Envoy's jwt_authn default), five minutes of skew."""
    config = shop_config(idp, requireExpiration=False, clockSkew="5m")
    with start_envoy(config, backend=backend, idp=idp) as envoy:
        yield envoy


def twice(envoy, path, token):
    """The same token twice, at path/1 and path/2 (a denial's log line is found by its path): the
    second answer comes through the verified-token cache. The paths and the responses."""
    return [(f"{path}/{i}", envoy.get(f"{path}/{i}", bearer(token))) for i in (1, 2)]


def test_a_token_that_meets_every_rule_passes(strict, idp):
    for _, response in twice(strict, PATH, mint(idp, "bob")):
        expect_allowed(response)


@pytest.mark.parametrize("case, claims, message, reason", [
    ("expired-30s-ago", {"exp": -30}, EXPIRED, "jwt_expired"),
    ("nbf-30s-ahead", {"nbf": 30}, NOT_YET, "jwt_not_yet_valid"),
    ("lifetime-over-an-hour", {"iat": 0, "exp": 3601}, LIFETIME, "jwt_lifetime_too_long"),
    ("issued-a-day-ago", {"iat": -86_400, "exp": 120}, LIFETIME, "jwt_lifetime_too_long"),
    ("no-iat-exp-too-far", {"iat": None, "exp": 3700}, LIFETIME, "jwt_lifetime_too_long"),
    ("typ-ID", {"typ": "ID"}, REQUIRED, "jwt_required_claim_mismatch"),
    ("typ-missing", {"typ": None}, REQUIRED, "jwt_required_claim_mismatch"),
    ("role-missing", {"realm_access": {"roles": ["offline_access"]}}, REQUIRED, "jwt_required_claim_mismatch"),
    ("exp-missing", {"exp": None}, NO_EXP, "jwt_missing_exp"),
])
def test_strict_rules_refuse(strict, idp, case, claims, message, reason):
    now = int(time.time())
    times = {name: now + offset for name, offset in claims.items() if name in ("exp", "nbf", "iat") and offset is not None}
    others = {name: value for name, value in claims.items() if name not in times}
    path = f"/api/public/strict/{case}"
    for sent, response in twice(strict, path, mint(idp, "bob", claims={**others, **times})):
        expect_rejected(strict, response, sent, message)
        assert denial_reason(strict, sent) == reason, (sent, reason)


def test_strict_rules_accept_at_their_bounds(strict, idp):
    now = int(time.time())
    # Exactly an hour from iat to exp; the role among others; no skew needed for a fresh token.
    token = mint(idp, "bob", iat=now, exp=now + 3600, realm_access={"roles": ["offline_access", "user"]})
    for _, response in twice(strict, PATH, token):
        expect_allowed(response)


def test_lenient_rules_accept_what_the_defaults_refuse(lenient, shop, idp):
    now = int(time.time())
    no_exp = mint(idp, "bob", exp=None)
    late = mint(idp, "bob", exp=now - 240)
    for token in (no_exp, late):
        for _, response in twice(lenient, PATH, token):
            expect_allowed(response)
    # The shop (defaults: exp required, 60 s skew) refuses both.
    for name, token, message in (("no-exp", no_exp, NO_EXP), ("late", late, EXPIRED)):
        path = f"{PATH}/shop-{name}"
        expect_rejected(shop, shop.get(path, bearer(token)), path, message)
    # Optional does not mean ignored: an exp that is there still ends the token, skew or not.
    path = f"{PATH}/lenient-expired"
    expect_rejected(lenient, lenient.get(path, bearer(mint(idp, "bob", exp=now - 400))), path, EXPIRED)
