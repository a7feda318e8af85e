"""Real-Envoy tests of the AuthorizationPolicy fields that depend on the connection and the host:
hosts, ports (two listeners), remote.ip (X-Forwarded-For behind one trusted proxy), path templates,
AUDIT and dry-run (logs and counters), token requirements, and configuration refusal with field
paths. source.ip is in test_addresses.py."""

import json
import time

import pytest

from testbed.config import jwt_rule
from testbed.envoy import start_envoy
from testbed.expect import bearer, expect_refused
from testbed.net import free_ports
from testbed.tokens import mint


def status_of(response):
    status, headers, body = response
    if status == 200:
        assert headers.get("x-backend") == "demo", response
    return status


def counter(envoy, name):
    """A jwt-authz counter from Envoy's stats (Envoy prefixes custom Wasm metrics)."""
    stats = envoy.stats()
    matches = [value for key, value in stats.items() if key.endswith(f"jwt_authz.{name}_total")]
    assert len(matches) == 1, sorted(key for key in stats if "jwt_authz" in key)
    return matches[0]


def wait_for_log(envoy, fragment, timeout=5.0):
    deadline = time.monotonic() + timeout
    while fragment not in envoy.log_text():
        assert time.monotonic() < deadline, f"{fragment!r} not logged"
        time.sleep(0.05)


# --- Hosts, ports, addresses, templates -----------------------------------------------------------

@pytest.fixture(scope="module")
def listener_ports():
    main, admin = free_ports(2)
    return {"ingress": main, "admin": admin}


@pytest.fixture(scope="module")
def fields_envoy(idp, backend, listener_ports):
    admin_port = str(listener_ports["admin"])
    config = {
        "jwtRules": [jwt_rule(idp)],
        "policies": [
            {"name": "no-admin-host", "action": "DENY", "rules": [
                {"to": [{"operation": {"hosts": ["admin.shop.example"]}}]}]},
            {"name": "admin-listener-only", "action": "DENY", "rules": [
                {"to": [{"operation": {"paths": ["/admin/*"], "notPorts": [admin_port]}}]}]},
            {"name": "office-only", "action": "DENY", "rules": [
                {"to": [{"operation": {"paths": ["/office/*"]}}],
                 "when": [{"key": "remote.ip", "notValues": ["198.51.100.0/24"]}]}]},
            {"name": "allow", "action": "ALLOW", "rules": [
                {"to": [{"operation": {"hosts": ["shop.example"], "paths": ["/host-checked"]}}]},
                {"to": [{"operation": {"paths": ["/admin/*", "/office/*"]}}]},
                {"to": [{"operation": {"paths": ["/on-main-port"]}}],
                 "when": [{"key": "destination.port", "values": [str(listener_ports["ingress"])]}]},
                {"to": [{"operation": {"paths": ["/orders/{*}/items", "/files/{**}", "/{**}.css"]}}]},
            ]},
        ],
    }
    # A gateway behind one trusted proxy, as Istio configures it for numTrustedProxies: 1.
    with start_envoy(config, backend=backend, idp=idp, listeners=listener_ports, use_remote_address=True,
                     xff_num_trusted_hops=1) as envoy:
        yield envoy


@pytest.mark.parametrize("host, path, status", [
    ("shop.example", "/host-checked", 200),
    ("SHOP.Example", "/host-checked", 200),
    ("shop.example:8443", "/host-checked", 200),
    ("other.example", "/host-checked", 401),
    ("admin.shop.example", "/files/x", 401),
    ("ADMIN.SHOP.EXAMPLE", "/files/x", 401),
    ("admin.shop.example:8443", "/files/x", 401),
    ("Admin.Shop.Example:1", "/files/x", 401),
])
def test_hosts_are_case_insensitive_with_and_without_port(fields_envoy, host, path, status):
    assert status_of(fields_envoy.get(path, {"Host": host})) == status


@pytest.mark.parametrize("listener, path, host, status", [
    ("admin", "/admin/x", None, 200),
    ("ingress", "/admin/x", None, 401),
    # The port is the listener's; naming the admin port in Host changes nothing.
    ("ingress", "/admin/x", "shop.example:{admin}", 401),
    ("ingress", "/on-main-port", None, 200),
    ("admin", "/on-main-port", None, 401),
])
def test_ports_are_the_connections(fields_envoy, listener_ports, listener, path, host, status):
    headers = {"Host": host.format(**listener_ports)} if host else None
    assert status_of(fields_envoy.get(path, headers, listener=listener)) == status


@pytest.mark.parametrize("forwarded_for, status", [
    # One trusted proxy: the last X-Forwarded-For entry is the client it saw.
    ("198.51.100.4", 200),
    ("203.0.113.9, 198.51.100.4", 200),
    # A client-written entry to the left of the trusted one counts for nothing.
    ("198.51.100.4, 203.0.113.9", 401),
    (None, 401),
    ("garbage", 401),
])
def test_remote_ip_counts_trusted_proxies(fields_envoy, forwarded_for, status):
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else None
    assert status_of(fields_envoy.get("/office/x", headers)) == status


@pytest.mark.parametrize("path, status", [
    ("/orders/7/items", 200),
    ("/orders/7/8/items", 401),
    ("/orders//items", 401),
    ("/files/", 200),
    ("/files/a/b/c", 200),
    ("/files", 401),
    ("/a/b/site.css", 200),
    ("/a/b/site.css.map", 401),
    ("/orders/7/../8/items", 200),
])
def test_path_templates(fields_envoy, path, status):
    assert status_of(fields_envoy.get(path)) == status


# --- AUDIT, dry-run, token requirements, unsafe paths ------------------------------------------------

@pytest.fixture(scope="module")
def reporting_envoy(idp, backend):
    config = {
        "jwtRules": [jwt_rule(idp)],
        "tokenRequirements": [
            {"name": "probes", "match": {"paths": ["/healthz"], "methods": ["GET"]}, "skipValidation": True},
            {"name": "orders-need-shop-token", "match": {"paths": ["/orders/{**}"]}, "issuers": [idp.issuer]},
        ],
        "policies": [
            {"name": "audit-orders", "action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/orders/*"]}}]}]},
            {"name": "trial-deny-deletes", "action": "DENY", "dryRun": True,
             "rules": [{"to": [{"operation": {"methods": ["DELETE"]}}]}]},
            {"name": "allow-all", "action": "ALLOW", "rules": [{}]},
        ],
    }
    with start_envoy(config, backend=backend, idp=idp) as envoy:
        yield envoy


def test_audit_policies_log_and_count_without_deciding(reporting_envoy, idp):
    before = counter(reporting_envoy, "audited")
    assert status_of(reporting_envoy.get("/orders/7", bearer(mint(idp, "bob")))) == 200
    assert status_of(reporting_envoy.get("/shop")) == 200
    assert counter(reporting_envoy, "audited") == before + 1
    wait_for_log(reporting_envoy, "audit: policy=audit-orders matched; allowed")


def test_dry_run_policies_log_and_count_what_they_would_deny(reporting_envoy, idp):
    before = counter(reporting_envoy, "dry_run_denied")
    response = reporting_envoy.get("/orders/7", bearer(mint(idp, "bob")), method="DELETE")
    assert status_of(response) == 200
    assert json.loads(response[2])["method"] == "DELETE"
    assert status_of(reporting_envoy.get("/shop", method="DELETE")) == 200
    assert counter(reporting_envoy, "dry_run_denied") == before + 2
    wait_for_log(reporting_envoy, "dry-run: would deny (policy=trial-deny-deletes) what is allowed")


def test_token_requirements(reporting_envoy, idp):
    probe = reporting_envoy.get("/healthz", {"Authorization": "Bearer not-even-a-jwt"})
    assert status_of(probe) == 200
    assert "authorization" not in json.loads(probe[2])["headers"]
    broken = reporting_envoy.get("/healthz", {"Authorization": "Bearer not-even-a-jwt"}, method="POST")
    assert broken[0] == 401 and "error=\"invalid_token\"" in broken[1]["www-authenticate"]
    assert reporting_envoy.get("/orders/7?x=1")[0::2] == (401, "Jwt is missing")
    assert status_of(reporting_envoy.get("/orders/7", bearer(mint(idp, "bob")))) == 200
    assert status_of(reporting_envoy.get("/shop")) == 200


# --- Configuration refusal ----------------------------------------------------------------------------

@pytest.mark.parametrize("policy, fragments", [
    ({"rules": [{"when": [{"key": "source.principal", "values": ["cluster.local/*/sa/x"]}]}]},
     ["policies[0].rules[0].when[0].values[0]", "only allowed as a whole value"]),
    ({"rules": [{"from": [{"source": {"remoteIpBlocks": ["10.0.0.0/33"]}}]}]},
     ["policies[0].rules[0].from[0].source.remoteIpBlocks[0]", "prefix length"]),
    ({"rules": [{"to": [{"operation": {"paths": ["/a/{**}/{*}"]}}]}]},
     ["policies[0].rules[0].to[0].operation.paths[0]", "{**} must be the last operator"]),
    ({"rules": [{"to": [{"operation": {"ports": ["https"]}}]}]},
     ["policies[0].rules[0].to[0].operation.ports[0]", "not a port number"]),
    ({"rules": [{"to": [{"operation": {"hostz": ["a"]}}]}]},
     ["policies[0].rules[0].to[0].operation.hostz", "unknown field"]),
], ids=["mtls-key", "bad-cidr", "bad-template", "bad-port", "unknown-field"])
def test_invalid_policies_are_refused_with_field_paths(backend, policy, fragments):
    with start_envoy({"policies": [policy]}, backend=backend, expect_failure=True) as envoy:
        expect_refused(envoy, fragments)
