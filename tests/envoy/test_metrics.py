"""Metrics and denial logs in real Envoy: counter values at /stats/prometheus after known traffic."""

import json
import re
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from testbed.config import ROLES_KEY
from testbed.envoy import start_envoy
from testbed.paths import REPO_ROOT
from testbed.expect import bearer
from testbed.net import free_port as closed_port
from testbed.tokens import mint

UNREACHABLE_ISSUER = "https://unreachable.example/realms/shop"

# What Istio's bootstrap does for extraStatTags (`(TAG=\.=(.*?);\.;)`), and its stats matcher,
# whose required `wasm` prefix is what lets `wasmcustom.*` through. The README documents these.
ISTIO_STYLE_STATS = {
    "stats_tags": [{"tag_name": tag, "regex": f"({tag}=\\.=(.*?);\\.;)"}
                   for tag in ("status", "reason", "policy", "issuer", "result")],
    "stats_matcher": {"inclusion_list": {"patterns": [
        {"prefix": "reporter="}, {"prefix": "cluster_manager"}, {"prefix": "listener_manager"},
        {"prefix": "server"}, {"prefix": "wasm"}, {"prefix": "component"}, {"prefix": "istio"},
    ]}},
}


def metrics_config(idp):
    return {
        "jwtRules": [
            {"issuer": idp.issuer, "audiences": ["shop"], "jwksUri": idp.jwks_uri, "jwksCluster": "idp"},
            # Keys that can never be fetched: requests with its tokens miss the cache and get 401.
            {"issuer": UNREACHABLE_ISSUER, "jwksUri": "http://127.0.0.1:9/certs", "jwksCluster": "nowhere",
             "timeout": "1s"},
        ],
        "policies": [
            {"name": "deny-debug", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/debug*"]}}]}]},
            {"name": "shop", "rules": [
                {"to": [{"operation": {"paths": ["/healthz"], "methods": ["GET"]}}]},
                {"from": [{"source": {"requestPrincipals": ["*"]}}], "to": [{"operation": {"paths": ["/api/admin/*"]}}],
                 "when": [{"key": ROLES_KEY, "values": ["admin"]}]},
            ]},
        ],
    }


def wait_for(condition, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def counter(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def traffic(idp, backend):
    """One Envoy, a fixed mix of requests; yields (envoy, samples, tokens sent)."""
    clusters = {"nowhere": closed_port()}
    with start_envoy(metrics_config(idp), backend=backend, idp=idp, clusters=clusters,
                     stats_config=ISTIO_STYLE_STATS) as envoy:
        # Keys first, so that every token below finds them cached (a hit).
        wait_for(lambda: counter(envoy.prometheus(), "jwt_authz_jwks_fetch_success_total"), "the first JWKS fetch")
        now = int(time.time())
        expired = mint(idp, "alice", exp=now - 3600)
        forged = mint(idp, "alice", key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
        alice, bob = mint(idp, "alice"), mint(idp, "bob")
        unreachable = mint(idp, "alice", iss=UNREACHABLE_ISSUER)
        sent = [expired, forged, alice, bob, unreachable]
        expectations = [
            ("/healthz", None, 200), ("/healthz", None, 200),
            ("/api/admin/users", None, 401),
            ("/api/admin/users", expired, 401), ("/api/admin/users", expired, 401), ("/healthz", expired, 401),
            ("/api/admin/users", forged, 401),
            ("/api/admin/users", bob, 403), ("/api/admin/orders", bob, 403),
            ("/debug/vars", alice, 403),
            ("/api/admin/users", alice, 200),
            ("/a%2Fb", None, 400),
            ("/api/admin/users", unreachable, 401),
        ]
        for path, token, status in expectations:
            got = envoy.get(path, bearer(token) if token else None)[0]
            assert got == status, (path, status, got)
        # The per-request counters reach Envoy on the plugin's next tick (every 500 ms).
        def flushed():
            samples = envoy.prometheus()
            lookups = sum(counter(samples, f"jwt_authz_jwks_cache_{kind}_total") for kind in ("hits", "misses"))
            return counter(samples, "jwt_authz_allowed_total") >= 3 and lookups >= 9
        wait_for(flushed, "the next tick's counter flush")
        envoy.idp_issuer = idp.issuer
        yield envoy, envoy.prometheus(), sent


def test_allowed_and_denied_counters_by_status_reason_and_policy(traffic):
    _, samples, _ = traffic
    assert counter(samples, "jwt_authz_allowed_total") == 3
    denied = {labels: value for (name, labels), value in samples.items() if name == "jwt_authz_denied_total"}
    assert denied == {
        (("policy", "-"), ("reason", "jwt_missing"), ("status", "401")): 1,
        (("policy", "-"), ("reason", "jwt_expired"), ("status", "401")): 3,
        (("policy", "-"), ("reason", "jwt_signature_invalid"), ("status", "401")): 1,
        (("policy", "-"), ("reason", "jwks_fetch_failed"), ("status", "401")): 1,
        (("policy", "-"), ("reason", "rbac_access_denied"), ("status", "403")): 2,
        (("policy", "deny-debug"), ("reason", "rbac_access_denied"), ("status", "403")): 1,
        (("policy", "-"), ("reason", "path_encoded_slash"), ("status", "400")): 1,
    }
    # The untagged total, readable without any tag extractor, is their sum.
    assert counter(samples, "jwt_authz_denials_total") == sum(denied.values()) == 10


def test_jwks_cache_and_fetch_counters(traffic):
    _, samples, _ = traffic
    # Tokens of the reachable issuer: 3 expired, 1 forged, 2 bob, 2 alice, plus the unreachable
    # issuer's one: each token check counts once, as a hit or a miss. How many land before the first
    # fetch completes (misses) depends on scheduling on a loaded machine; at least that one does.
    hits = counter(samples, "jwt_authz_jwks_cache_hits_total")
    misses = counter(samples, "jwt_authz_jwks_cache_misses_total")
    assert hits + misses == 9 and misses >= 1 and hits >= 7, (hits, misses)
    assert counter(samples, "jwt_authz_jwks_fetch_success_total") >= 1
    assert counter(samples, "jwt_authz_jwks_fetch_failure_total") >= 1
    # Per issuer, the issuer a tag (not part of the name): fetches by result, keys in use.
    tag = lambda issuer: re.sub(r"[^A-Za-z0-9_-]", "_", issuer)  # noqa: E731
    envoy, _, _ = traffic
    own, unreachable = tag(envoy.idp_issuer), tag(UNREACHABLE_ISSUER)
    assert counter(samples, "jwt_authz_jwks_fetches_total", issuer=own, result="success") >= 1
    assert counter(samples, "jwt_authz_jwks_fetches_total", issuer=unreachable, result="failure") >= 1
    assert counter(samples, "jwt_authz_jwks_fetches_total", issuer=unreachable, result="success") == 0
    assert counter(samples, "jwt_authz_jwks_keys_in_use", issuer=own) >= 1
    assert counter(samples, "jwt_authz_jwks_keys_in_use", issuer=unreachable) == 0


def test_prometheus_types_and_raw_stat_names(traffic):
    envoy, _, _ = traffic
    _, _, text = envoy.admin("/stats/prometheus")
    assert "# TYPE jwt_authz_denied_total counter" in text
    assert "# TYPE jwt_authz_allowed_total counter" in text
    _, _, raw = envoy.admin("/stats?filter=jwt_authz")
    # Without tag extraction the dimensions stay in the name, in Istio's encoding.
    assert "wasmcustom.jwt_authz.status=.=403;.;reason=.=rbac_access_denied;.;policy=.=deny-debug;.;denied_total: 1" \
        in raw, raw


def test_one_log_line_per_denial_with_code_and_policy_never_the_token(traffic):
    envoy, _, sent = traffic
    denial = re.compile(r"denied (\d{3}) reason=(\w+) policy=(\S+)")

    def denials():
        found = [match.groups() for match in denial.finditer(envoy.log_text())]
        return found if len(found) >= 10 else None

    found = wait_for(denials, "the denial log lines")
    assert sorted(found) == sorted([
        ("400", "path_encoded_slash", "-"),
        ("401", "jwt_missing", "-"),
        ("401", "jwt_expired", "-"), ("401", "jwt_expired", "-"), ("401", "jwt_expired", "-"),
        ("401", "jwt_signature_invalid", "-"),
        ("401", "jwks_fetch_failed", "-"),
        ("403", "rbac_access_denied", "-"), ("403", "rbac_access_denied", "-"),
        ("403", "rbac_access_denied", "deny-debug"),
    ])
    log = envoy.log_text()
    for token in sent:
        for part in token.split("."):
            assert part not in log, "a token (or part of one) reached the log"


def test_deny_lines_name_the_method_request_id_and_an_unknown_tokens_issuer(shop, idp):
    """The operator's questions on a 401: which request (Envoy's x-request-id, as in its access log)
    and, for an unknown issuer, which issuer the token named: the Keycloak hostname and
    trailing-slash mismatches. Client-chosen values cannot add fields or lines."""
    wrong_issuer = idp.issuer + "/"
    token = mint(idp, iss=wrong_issuer)
    status, _, _ = shop.get("/api/deny-line-issuer", {**bearer(token), "x-request-id": "req-4711"}, method="POST")
    assert status == 401
    status, _, _ = shop.get("/api/deny-line-forged", {"x-request-id": "a b resource=http://evil/"})
    assert status == 401

    def lines():
        found = [line for line in shop.log_text().splitlines() if "/api/deny-line-" in line and "denied 401" in line]
        return found if len(found) >= 2 else None

    issuer_line, forged_line = sorted(wait_for(lines, "the two deny lines"), key=lambda line: "forged" in line)
    assert (f"reason=jwt_unknown_issuer policy=- method=POST request_id=req-4711 token_issuer={wrong_issuer} "
            f"resource=http://") in issuer_line, issuer_line
    assert issuer_line.endswith("/api/deny-line-issuer"), issuer_line
    # Spaces in the client's value become _, so the line's own resource stays the last field.
    assert "request_id=a_b_resource=http://evil/ resource=http://" in forged_line, forged_line
    for part in token.split("."):
        assert part not in shop.log_text()


def test_access_log_response_code_details_name_the_reason_and_the_policy(traffic):
    """%RESPONSE_CODE_DETAILS% (in Istio's default access log) for the plugin's denials, shaped as
    the native filters' (`jwt_authn_access_denied{…}`, `rbac_access_denied_matched_policy[…]`)."""
    envoy, _, _ = traffic
    lines = envoy.access_log(wait_for=13)
    entries = [line.split(" ", 3) for line in lines]
    observed = {detail for _, _, _, detail in entries}
    for expected in ("jwt_authz_denied{jwt_missing}", "jwt_authz_denied{jwt_expired}",
                     "jwt_authz_denied{jwt_signature_invalid}", "jwt_authz_denied{jwks_fetch_failed}",
                     "jwt_authz_denied{path_encoded_slash}", "jwt_authz_access_denied[deny-debug]",
                     "jwt_authz_access_denied[none]"):
        assert expected in observed, (expected, lines)
    assert ["GET", "/debug/vars", "403", "jwt_authz_access_denied[deny-debug]"] in entries, lines
    assert ["GET", "/a%2Fb", "400", "jwt_authz_denied{path_encoded_slash}"] in entries, lines
    # Envoy's own details for what the plugin let through.
    assert ["GET", "/healthz", "200", "via_upstream"] in entries, lines


def test_the_grafana_dashboard_parses_and_reads_only_what_the_filter_emits(traffic):
    """examples/grafana/jwt-authz-dashboard.json: every metric and label its queries name is one this
    Envoy exported after the traffic above (so a renamed metric breaks this test, not the dashboard)."""
    _, samples, _ = traffic
    dashboard = json.loads((REPO_ROOT / "examples" / "grafana" / "jwt-authz-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 10 and dashboard["uid"] == "jwt-authz"
    emitted = {name for name, _ in samples}
    labels = {label for _, pairs in samples for label, _ in pairs}
    for expr in exprs:
        for name in re.findall(r"\bjwt_authz_[a-z_]+", expr):
            assert name in emitted, (name, expr, sorted(emitted))
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (part.strip() for part in group.split(",")):
                assert label in labels, (label, expr)
    for needed in ("jwt_authz_denied_total", "jwt_authz_jwks_fetches_total", "jwt_authz_jwks_cache_hits_total",
                   "jwt_authz_requests_waited_for_keys_total", "jwt_authz_denials_total"):
        assert any(needed in expr for expr in exprs), needed

