"""JWKS lifecycle in real Envoy with several worker VMs: one shared fetch, refresh, rotation,
outages, discovery, hostile key sets, and the stats that show it.

The tests share an identity provider (tools/devidp.py) of their own, so key rotation here
concerns no other test module; hit counts are taken relative to each test's start. Envoy runs with
--concurrency 4 (one Wasm VM per worker thread) unless a test says otherwise.
"""

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from testbed.envoy import start_envoy
from testbed.expect import FETCH, KID
from testbed.net import http_request
from testbed.services import start_idp
from testbed.tokens import b64url, mint

WORKERS = 4


@pytest.fixture(scope="module")
def lifecycle_idp(tmp_path_factory):
    with start_idp(tmp_path_factory.mktemp("lifecycle-idp")) as server:
        yield server


@pytest.fixture
def own_idp(lifecycle_idp):
    """The module's IdP in its normal mode, with hit counts taken from here."""
    lifecycle_idp.reset_certs_mode()
    # Counted before the hit counts are: the test itself must not fetch the key set.
    lifecycle_idp.signing_key_count = len(lifecycle_idp.signing_jwks())
    hits = lifecycle_idp.hits()
    lifecycle_idp.certs_hits_before = hits["certs"]
    lifecycle_idp.discovery_hits_before = hits["discovery"]
    yield lifecycle_idp
    lifecycle_idp.reset_certs_mode()


def config(idp, **changes):
    """Every request needs a valid token of the IdP; a change of None removes a field."""
    rule = {"issuer": idp.issuer, "audiences": ["shop"], "jwksUri": idp.jwks_uri, "jwksCluster": "idp"}
    rule.update(changes)
    rule = {name: value for name, value in rule.items() if value is not None}
    policy = {"name": "authenticated", "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}
    return {"jwtRules": [rule], "policies": [policy]}


def call(envoy, token, path="/api", timeout=10.0):
    """(status, body) of one request on a new connection (so requests spread over workers)."""
    status, _, body = http_request(envoy.port, "GET", path, {"Authorization": f"Bearer {token}"}, timeout=timeout)
    return status, body


def burst(envoy, tokens, parallel=16):
    """Send every token at once, each on its own connection; the (status, body) answers in order."""
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(lambda token: call(envoy, token), tokens))


def allowed(answer):
    return answer[0] == 200


def all_allowed(answers):
    """Asserts every answer is the backend's 200 (naming the others)."""
    refused = [answer for answer in answers if not allowed(answer)]
    assert not refused, f"{len(refused)} of {len(answers)} refused: {refused[:4]}"
    return True


def logged(envoy, fragment, timeout=3.0):
    """Whether the Envoy log shows fragment (within timeout: the log is flushed every 50 ms)."""
    return wait_for(lambda: fragment in envoy.log_text(), timeout=timeout)


def stat(envoy, name):
    """A counter (`name` without its `_total`) or, for `issuer=…;jwks_keys_in_use`, the gauge."""
    suffix = "" if name.endswith("jwks_keys_in_use") else "_total"
    return envoy.stats().get(f"wasmcustom.jwt_authz.{name}{suffix}", 0)


def gauge_name(idp):
    # The issuer is a tag (Istio's encoding), its characters other than letters, digits, - and _ as _.
    return "issuer=.=" + re.sub(r"[^A-Za-z0-9_-]", "_", idp.issuer) + ";.;jwks_keys_in_use"


def signing_keys(idp):
    """How many keys the filter holds for the IdP once it has its key set: every signing key the IdP
    published when the test began (one per algorithm), not the encryption key."""
    return idp.signing_key_count


def certs_hits(idp):
    """Key-set fetches since the test began."""
    return idp.hits()["certs"] - idp.certs_hits_before


def discovery_hits(idp):
    return idp.hits()["discovery"] - idp.discovery_hits_before


def wait_for(condition, timeout=10.0, interval=0.05):
    """Poll until condition() is truthy; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def worker_threads_that_allowed(envoy):
    """Envoy thread ids that logged an allowed request (the log line format is [time][thread][level])."""
    return set(re.findall(r"\]\[(\d+)\]\[debug\]\[wasm\].*allowed ", envoy.log_text()))


# --- One fetch for all workers ----------------------------------------------------------------------

def test_a_burst_of_first_requests_on_every_worker_makes_one_fetch(own_idp, backend):
    own_idp.certs_mode(delay=1.0)  # the first fetch is still in flight when the burst arrives
    with start_envoy(config(own_idp), backend=backend, idp=own_idp, concurrency=WORKERS) as envoy:
        answers = burst(envoy, [mint(own_idp, "bob") for _ in range(32)], parallel=32)
        assert all_allowed(answers)
        assert certs_hits(own_idp) == 1
        assert wait_for(lambda: len(worker_threads_that_allowed(envoy)) > 1, timeout=3), \
            "the burst should have reached several workers"
        assert stat(envoy, "jwks_fetch_success") == 1
        assert stat(envoy, "jwks_fetch_failure") == 0
        assert stat(envoy, "requests_waited_for_keys") >= 1
        assert stat(envoy, gauge_name(own_idp)) == signing_keys(own_idp)
        # Later requests need no fetch at all.
        assert all_allowed(burst(envoy, [mint(own_idp, "alice") for _ in range(16)]))
        assert certs_hits(own_idp) == 1


def test_inline_keys_need_no_fetch_on_any_worker(own_idp, backend):
    inline = config(own_idp, jwksUri=None, jwksCluster=None, jwks=own_idp.certs_text())
    before = certs_hits(own_idp)  # certs_text() was one
    with start_envoy(inline, backend=backend, concurrency=WORKERS) as envoy:
        assert all_allowed(burst(envoy, [mint(own_idp, "bob") for _ in range(16)]))
        assert stat(envoy, gauge_name(own_idp)) == signing_keys(own_idp)
        assert stat(envoy, "requests_waited_for_keys") == 0
    assert certs_hits(own_idp) == before


# --- Refresh and rotation ---------------------------------------------------------------------------

def test_keys_refresh_in_the_background_as_often_as_max_age_says(own_idp, backend):
    own_idp.certs_mode(headers={"Cache-Control": "public, max-age=1"})
    # max-age may shorten cacheDuration down to a tenth of it: 1 s here.
    with start_envoy(config(own_idp, cacheDuration="10s"), backend=backend, idp=own_idp,
                     concurrency=WORKERS) as envoy:
        assert allowed(call(envoy, mint(own_idp, "bob")))
        waited = stat(envoy, "requests_waited_for_keys")
        # Refreshes come about once a second (less up to 10% jitter), from one worker at a time.
        assert wait_for(lambda: certs_hits(own_idp) >= 3, timeout=5), certs_hits(own_idp)
        assert wait_for(lambda: re.search(r"refresh in (9\d\d|1000) ms", envoy.log_text()), timeout=3)
        assert all_allowed(burst(envoy, [mint(own_idp, "bob") for _ in range(8)]))
        assert stat(envoy, "requests_waited_for_keys") == waited, "refreshes happen behind the traffic"
        assert stat(envoy, "jwks_fetch_success") == certs_hits(own_idp)


def test_a_rotated_key_is_accepted_on_first_use_and_the_old_one_dropped(own_idp, backend):
    with start_envoy(config(own_idp), backend=backend, idp=own_idp, concurrency=WORKERS) as envoy:
        old_token = mint(own_idp, "bob")
        assert all_allowed(burst(envoy, [old_token] * 8))
        assert certs_hits(own_idp) == 1
        old_kid = own_idp.kid
        new_kid = own_idp.rotate()  # the IdP now publishes the new RS256 key, not the old one
        assert new_kid != old_kid

        first_use = call(envoy, mint(own_idp, "alice"))
        assert allowed(first_use), first_use
        assert certs_hits(own_idp) == 2
        assert stat(envoy, "jwks_refetch_unknown_kid") == 1
        # Every worker has the new key now, without fetching it again.
        assert all_allowed(burst(envoy, [mint(own_idp, "alice") for _ in range(16)]))
        assert certs_hits(own_idp) == 2

        # The old key is gone everywhere once the workers took in the new key set (a tick).
        time.sleep(0.5)
        for status, body in burst(envoy, [old_token] * 8):
            assert (status, body) == (401, KID)
        # Unknown kids within the rate-limit window are refused without asking the IdP again.
        bogus = [mint(own_idp, "bob", header={"kid": f"bogus-{i}"}) for i in range(16)]
        for status, body in burst(envoy, bogus):
            assert (status, body) == (401, KID)
        assert certs_hits(own_idp) == 2
        assert stat(envoy, "jwks_refetch_unknown_kid") == 1
        assert logged(envoy, f"a token names a kid the keys lack; refetching {own_idp.jwks_uri}")


def test_unknown_kids_refetch_again_after_the_rate_limit_window(own_idp, backend):
    with start_envoy(config(own_idp, unknownKidRefetchInterval="1s"), backend=backend, idp=own_idp,
                     concurrency=2) as envoy:
        assert allowed(call(envoy, mint(own_idp, "bob")))
        bogus = mint(own_idp, "bob", header={"kid": "bogus"})
        assert call(envoy, bogus) == (401, KID)
        assert certs_hits(own_idp) == 2
        assert call(envoy, bogus) == (401, KID)
        assert certs_hits(own_idp) == 2
        time.sleep(1.1)
        assert call(envoy, bogus) == (401, KID)
        assert certs_hits(own_idp) == 3
        assert stat(envoy, "jwks_refetch_unknown_kid") == 2


# --- Outages ----------------------------------------------------------------------------------------

def test_an_outage_loses_no_request_the_cached_keys_can_verify(own_idp, backend):
    rule = config(own_idp, cacheDuration="1s", timeout="300ms")
    with start_envoy(rule, backend=backend, idp=own_idp, concurrency=WORKERS) as envoy:
        token = mint(own_idp, "bob")
        assert allowed(call(envoy, token))
        for outage in ({"status": 503}, {"body": "<html>maintenance</html>"}, {"delay": 1.0}):
            own_idp.certs_mode(**outage)
            failures = stat(envoy, "jwks_fetch_failure")
            answers = []
            # Traffic until the outage was noticed (a refresh or retry failed) and a while after.
            started = time.monotonic()
            while stat(envoy, "jwks_fetch_failure") == failures or time.monotonic() - started < 1.0:
                assert time.monotonic() - started < 5, f"no failed fetch during {outage}"
                answers += burst(envoy, [token] * 4, parallel=4)
            assert all_allowed(answers)
            assert stat(envoy, gauge_name(own_idp)) == signing_keys(own_idp)
        assert logged(envoy, "answered HTTP 503; keeping the previous keys")
        assert logged(envoy, "JWKS is not valid JSON")
        # Envoy answers a timed-out call itself, with 504.
        assert logged(envoy, "answered HTTP 504; keeping the previous keys")

        # The provider is back: fetches succeed again, without a restart.
        own_idp.reset_certs_mode()
        successes = stat(envoy, "jwks_fetch_success")
        assert wait_for(lambda: stat(envoy, "jwks_fetch_success") > successes, timeout=5)
        assert all_allowed(burst(envoy, [token] * 8))


def test_without_keys_requests_fail_fast_and_traffic_recovers_by_itself(own_idp, backend):
    own_idp.certs_mode(delay=30)  # a provider that hangs
    rule = config(own_idp, cacheDuration="2s", timeout="500ms")
    with start_envoy(rule, backend=backend, idp=own_idp, concurrency=WORKERS) as envoy:
        token = mint(own_idp, "bob")
        # The first requests wait for the first fetch (until its timeout), then get a 401; once a
        # fetch has failed, requests are refused at once. None waits anywhere near the hang.
        for status, body in burst(envoy, [token] * 8) + burst(envoy, [token] * 8):
            assert (status, body) == (401, FETCH)
        assert call(envoy, token, timeout=2.0) == (401, FETCH)
        assert stat(envoy, "jwks_fetch_failure") >= 1
        assert stat(envoy, gauge_name(own_idp)) == 0

        own_idp.reset_certs_mode()
        assert wait_for(lambda: allowed(call(envoy, token)), timeout=8), envoy.log_tail()
        assert all_allowed(burst(envoy, [token] * 8))
        assert stat(envoy, gauge_name(own_idp)) == signing_keys(own_idp)


# --- OIDC discovery ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cluster", ["idp", None], ids=["jwksCluster", "derived-cluster"])
def test_discovery_finds_the_key_set(own_idp, backend, cluster):
    rule = config(own_idp, jwksUri=None, jwksCluster=cluster)
    clusters = {} if cluster else {f"outbound|{own_idp.port}||127.0.0.1": own_idp.port}
    with start_envoy(rule, backend=backend, idp=own_idp, clusters=clusters, concurrency=WORKERS) as envoy:
        assert all_allowed(burst(envoy, [mint(own_idp, "bob") for _ in range(16)]))
        assert discovery_hits(own_idp) == 1
        assert certs_hits(own_idp) == 1
        assert logged(envoy, f"discovery names jwks_uri {own_idp.jwks_uri}")


def test_discovery_refuses_a_document_for_another_issuer(own_idp, backend):
    # Same server, another name: its discovery document names the 127.0.0.1 issuer, not this one.
    impostor = own_idp.issuer.replace("127.0.0.1", "localhost")
    rule = config(own_idp, issuer=impostor, jwksUri=None)
    with start_envoy(rule, backend=backend, idp=own_idp, concurrency=2) as envoy:
        token = mint(own_idp, "bob", iss=impostor)
        assert call(envoy, token) == (401, FETCH)
        assert logged(envoy, f'discovery document names issuer "{own_idp.issuer}", not "{impostor}"')
        assert discovery_hits(own_idp) >= 1
        assert certs_hits(own_idp) == 0


# --- Hostile key sets -------------------------------------------------------------------------------

def small_rsa_jwk(kid, bits=1024):
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key().public_numbers()
    n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64url(n), "e": "AQAB"}


def signing_jwk(idp):
    return idp.signing_jwk("RS256")


def hostile_cases(idp):
    """name → (JWKS body, log fragment). The first five leave no usable key; the others keep one."""
    good = signing_jwk(idp)
    return {
        "oversized": ('{"keys": [' + " " * 300_000 + "]}", "JWKS of 300012 bytes exceeds the 262144-byte limit"),
        "not-json": ("<html>502 Bad Gateway</html>", "JWKS is not valid JSON"),
        "no-keys-array": ('{"keys": "none"}', 'JWKS has no "keys" array'),
        "other-key-types": (
            json.dumps({"keys": [{"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
                                 {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}]}),
            'kty "oct" is not RSA, EC or OKP'),
        "encryption-only": (json.dumps({"keys": [{**good, "use": "enc"}]}), 'use "enc" is not "sig"'),
        "duplicate-kids": (
            json.dumps({"keys": [good, {**small_rsa_jwk(good["kid"], 2048), "kid": good["kid"]}]}),
            "duplicate kid for the same algorithms, the first key with it is used"),
        "small-key": (json.dumps({"keys": [small_rsa_jwk("weak"), good]}), "1024-bit modulus is below 2048 bits"),
        "garbage-keys": (json.dumps({"keys": [7, None, {"kty": "RSA", "n": "!!", "e": "AQAB"}, good]}),
                         "key 2: n is not base64url"),
    }


@pytest.mark.parametrize("names, status", [
    (["oversized", "not-json", "no-keys-array", "other-key-types", "encryption-only"], 401),
    (["duplicate-kids", "small-key", "garbage-keys"], 200),
], ids=["no-usable-key", "bad-keys-skipped"])
def test_hostile_key_sets_are_logged_and_never_crash(own_idp, backend, names, status):
    """One Envoy meets each hostile key set in turn (a short cacheDuration makes it fetch again
    within a second): each is named in the log, tokens get the expected answer, nothing crashes."""
    cases = hostile_cases(own_idp)
    token = mint(own_idp, "bob")
    own_idp.certs_mode(body=cases[names[0]][0])
    with start_envoy(config(own_idp, cacheDuration="1s"), backend=backend, idp=own_idp, concurrency=2) as envoy:
        for name in names:
            body, fragment = cases[name]
            own_idp.certs_mode(body=body)
            assert logged(envoy, fragment, timeout=5), f"{name}: {envoy.log_tail()}"
            answers = burst(envoy, [token] * 4)
            if status == 401:
                assert answers == [(401, FETCH)] * 4, answers
            else:
                assert all_allowed(answers)
            assert envoy.exit_code is None, name
        # It recovers when the provider serves a proper key set again.
        own_idp.reset_certs_mode()
        assert wait_for(lambda: allowed(call(envoy, token)), timeout=5)
        assert "panicked" not in envoy.log_text()
