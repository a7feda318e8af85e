"""Where the keys come from, in real Envoy: a jwksUri fetched through a cluster (unreachable,
failing, slow: requests wait for the first fetch, and get 401 when it times out), the cluster name
derived from the URI, and inline keys that need no fetch."""

from testbed.config import shop_config
from testbed.envoy import start_envoy
from testbed.expect import FETCH, VERIFY, bearer, expect_allowed, expect_rejected
from testbed.net import free_port
from testbed.tokens import mint, other_key


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


WAITED = "wasmcustom.jwt_authz.requests_waited_for_keys_total"


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
