"""Opaque tokens (RFC 7662) in real Envoy with two workers: the dev IdP issues reference tokens
(client shop-opaque) and answers introspection as Keycloak does (client authentication, the
token's claims with `active: true`, or `active: false`). A token passes only while the endpoint
says active; its claims feed the policies and output headers like a JWT's; concurrent requests
with one token make one call per worker; answers are reused for `cacheDuration`; an outage of
the endpoint fails closed and recovers alone; the client secret may come from the VM's
environment, and a missing one refuses the configuration."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from testbed.config import shop_config
from testbed.envoy import start_envoy, wasm_filter
from testbed.expect import bearer, denial_reason, expect_allowed, expect_forbidden, expect_refused
from testbed.paths import WASM_PATH

CACHE_SECONDS = 2


def introspection(idp, **changes):
    settings = {"endpoint": f"{idp.issuer}/protocol/openid-connect/token/introspect", "cluster": "idp",
                "clientId": "shop-backend", "clientSecret": "shop-backend-secret",
                "cacheDuration": f"{CACHE_SECONDS}s", "timeout": "1s"}
    settings.update(changes)
    return {name: value for name, value in settings.items() if value is not None}


@pytest.fixture(scope="module")
def envoy(idp, backend):
    config = shop_config(idp, introspection=introspection(idp))
    with start_envoy(config, backend=backend, idp=idp, concurrency=2) as envoy:
        yield envoy


def expect_introspection_refusal(envoy, path, token, reason, message):
    status, headers, body = envoy.get(path, bearer(token))
    assert (status, body) == (401, message), (status, body)
    assert 'error="invalid_token"' in headers.get("www-authenticate", "")
    assert denial_reason(envoy, path) == reason


def test_an_active_opaque_token_is_a_caller_with_its_claims(envoy, idp):
    alice, bob = idp.opaque_token("alice"), idp.opaque_token("bob")
    assert alice.count(".") == 0, "an opaque token"
    echoed = expect_allowed(envoy.get("/api/public/opaque/alice", bearer(alice), ))
    assert echoed["headers"].get("x-user") == "alice", echoed
    # No JWT payload to pass on: a client's own x-jwt-payload is removed and none is written.
    echoed = expect_allowed(envoy.get("/api/public/opaque/alice-2", {**bearer(alice), "x-jwt-payload": "forged"}))
    assert "x-jwt-payload" not in {name.lower() for name in echoed["headers"]}, echoed
    # The admin role comes from the answer, as from a JWT's realm_access.
    expect_allowed(envoy.get("/api/admin/opaque/alice", bearer(alice)))
    expect_forbidden(envoy, envoy.get("/api/admin/opaque/bob", bearer(bob)), "/api/admin/opaque/bob")


def test_unknown_and_revoked_tokens_are_refused(envoy, idp):
    expect_introspection_refusal(envoy, "/api/public/opaque/unknown", "not-a-token-the-idp-issued",
                                 "introspection_inactive", "Token is not active")
    token = idp.opaque_token("bob")
    expect_allowed(envoy.get("/api/public/opaque/before-revocation", bearer(token)))
    assert idp.revoke(token) == 200
    # Within cacheDuration the answer is reused; after it, the revocation holds.
    time.sleep(CACHE_SECONDS + 1.1)
    expect_introspection_refusal(envoy, "/api/public/opaque/revoked", token, "introspection_inactive",
                                 "Token is not active")


def test_concurrent_requests_with_one_token_make_one_call_per_worker_and_answers_are_reused(envoy, idp):
    token = idp.opaque_token("alice")
    before = idp.hits()["introspect"]
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda i: envoy.get(f"/api/public/opaque/burst/{i}", bearer(token))[0], range(24)))
    assert answers == [200] * 24, answers
    calls = idp.hits()["introspect"] - before
    assert 1 <= calls <= 2, f"{calls} introspection calls for one token on two workers"
    for i in range(10):
        assert envoy.get(f"/api/public/opaque/again/{i}", bearer(token))[0] == 200
    assert idp.hits()["introspect"] - before == calls, "answers are reused within cacheDuration"


def test_an_outage_fails_closed_and_recovers_alone(envoy, idp):
    token, other = idp.opaque_token("bob"), idp.opaque_token("alice")
    try:
        idp.introspection_mode(status=503)
        expect_introspection_refusal(envoy, "/api/public/opaque/outage", token, "introspection_failed",
                                     "Token introspection failed")
        idp.introspection_mode(delay=2.5)  # longer than the 1 s timeout
        started = time.monotonic()
        expect_introspection_refusal(envoy, "/api/public/opaque/stalled", other, "introspection_failed",
                                     "Token introspection failed")
        assert time.monotonic() - started < 2.4, "refused at the timeout, not after the stall"
    finally:
        idp.introspection_mode()
    time.sleep(1.1)  # a failure is remembered for the rest of its second only
    expect_allowed(envoy.get("/api/public/opaque/recovered", bearer(token)))


def test_wrong_client_credentials_fail_closed(idp, backend):
    config = shop_config(idp, introspection=introspection(idp, clientSecret="wrong"))
    with start_envoy(config, backend=backend, idp=idp) as envoy:
        expect_introspection_refusal(envoy, "/api/public/opaque/wrong-secret", idp.opaque_token("bob"),
                                     "introspection_failed", "Token introspection failed")
        # JWTs of the same issuer are not introspected: they are verified as always.
        expect_allowed(envoy.get("/api/public/opaque/jwt", bearer(idp.password_token("bob", "bob"))))


def test_the_secret_comes_from_the_vm_environment(idp, backend):
    config = shop_config(idp, introspection=introspection(idp, clientSecret=None, clientSecretEnv="INTROSPECTION_SECRET"))
    filters = [wasm_filter(config, WASM_PATH, env={"INTROSPECTION_SECRET": "shop-backend-secret"})]
    with start_envoy(None, backend=backend, idp=idp, filters=filters) as envoy:
        expect_allowed(envoy.get("/api/public/opaque/env", bearer(idp.opaque_token("alice"))))
    with start_envoy(config, backend=backend, idp=idp, expect_failure=True) as envoy:
        expect_refused(envoy, ["jwtRules[0].introspection.clientSecretEnv", '"INTROSPECTION_SECRET" is not set'])
        assert "shop-backend-secret" not in envoy.log_text()
