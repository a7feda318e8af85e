"""The verified-token cache in real Envoy: what it remembers, that it never changes a decision, and
the gauges that show its size and the VM's memory."""

import time

from testbed.config import ROLES_KEY
from testbed.envoy import start_envoy
from testbed.tokens import mint


def plugin_config(idp):
    return {
        "jwtRules": [{"issuer": idp.issuer, "audiences": ["shop"], "jwksUri": idp.jwks_uri, "jwksCluster": "idp",
                      "outputClaimToHeaders": [{"header": "x-user", "claim": "preferred_username"}]}],
        "policies": [{"name": "shop", "action": "ALLOW", "rules": [
            {"from": [{"source": {"requestPrincipals": ["*"]}}], "to": [{"operation": {"paths": ["/api/*"]}}]},
            {"from": [{"source": {"requestPrincipals": ["*"]}}], "to": [{"operation": {"paths": ["/admin/*"]}}],
             "when": [{"key": ROLES_KEY, "values": ["admin"]}]},
        ]}],
    }


def gauge(envoy, name):
    """A jwt-authz gauge, once the root context's 500 ms tick has refreshed it."""
    time.sleep(0.7)
    stats = envoy.stats()
    matches = [value for key, value in stats.items() if key.endswith(f"jwt_authz.{name}")]
    assert len(matches) == 1, sorted(key for key in stats if "jwt_authz" in key)
    return matches[0]


def test_cached_tokens_get_the_same_answers_and_policies_still_apply(idp, backend):
    with start_envoy(plugin_config(idp), backend=backend, idp=idp) as envoy:
        alice, bob = mint(idp, "alice"), mint(idp, "bob")
        for _ in range(3):
            status, _, body = envoy.get("/api/orders", {"Authorization": f"Bearer {alice}"})
            assert status == 200 and '"x-user": "alice"' in body
            assert envoy.get("/admin/users", {"Authorization": f"Bearer {alice}"})[0] == 200
            # bob is authenticated from the cache, and still not an admin.
            assert envoy.get("/api/orders", {"Authorization": f"Bearer {bob}"})[0] == 200
            assert envoy.get("/admin/users", {"Authorization": f"Bearer {bob}"})[0] == 403
        assert gauge(envoy, "token_cache_entries") == 2
        # A cached token's signature on another payload is not a cached token.
        header, payload, signature = alice.split(".")
        forged = ".".join((header, mint(idp, "alice", jti="other").split(".")[1], signature))
        assert envoy.get("/api/orders", {"Authorization": f"Bearer {forged}"})[0] == 401
        assert gauge(envoy, "token_cache_entries") == 2


def test_an_expired_cached_token_is_refused(idp, backend):
    with start_envoy(plugin_config(idp), backend=backend, idp=idp) as envoy:
        # Valid for one more second plus the 60 s skew is too long to wait; instead a token that is
        # valid now and one that expired are both presented repeatedly: only the first is cached.
        fresh = mint(idp, "alice", exp=int(time.time()) + 300)
        stale = mint(idp, "alice", exp=int(time.time()) - 120)
        for _ in range(2):
            assert envoy.get("/api/x", {"Authorization": f"Bearer {fresh}"})[0] == 200
            assert envoy.get("/api/x", {"Authorization": f"Bearer {stale}"})[0] == 401
        assert gauge(envoy, "token_cache_entries") == 1


def test_wasm_memory_gauge_reports_the_linear_memory(idp, backend):
    with start_envoy(plugin_config(idp), backend=backend, idp=idp) as envoy:
        for jti in ("one", "two", "three"):
            assert envoy.get("/api/x", {"Authorization": f"Bearer {mint(idp, jti=jti)}"})[0] == 200
        assert gauge(envoy, "token_cache_entries") == 3
        memory = gauge(envoy, "wasm_memory_bytes")
        # Whole 64 KiB pages; a fresh VM holds the module's data and stack plus a little heap.
        assert memory % 65536 == 0
        assert 1 << 20 <= memory <= 8 << 20, memory


def test_the_cache_holds_at_most_token_cache_size_and_evicts_the_least_recently_used(idp, backend):
    config = plugin_config(idp)
    config["limits"] = {"tokenCacheSize": 2, "identityCacheSize": 1}
    with start_envoy(config, backend=backend, idp=idp) as envoy:
        tokens = [mint(idp, jti=jti) for jti in ("one", "two", "three")]
        for token in tokens:
            assert envoy.get("/api/x", {"Authorization": f"Bearer {token}"})[0] == 200
        assert gauge(envoy, "token_cache_entries") == 2
        # Evicted or not, every token still gets the same answer (the cache never decides).
        for token in tokens * 2:
            assert envoy.get("/api/x", {"Authorization": f"Bearer {token}"})[0] == 200
        assert gauge(envoy, "token_cache_entries") == 2
    config["limits"] = {"tokenCacheSize": 0}
    with start_envoy(config, backend=backend, idp=idp) as envoy:
        for _ in range(2):
            assert envoy.get("/api/x", {"Authorization": f"Bearer {tokens[0]}"})[0] == 200
        assert gauge(envoy, "token_cache_entries") == 0
