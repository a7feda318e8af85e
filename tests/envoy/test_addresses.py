"""source.ip and remote.ip under each connection-manager setting, side by side with Envoy's native
RBAC configured as istiod configures it (ipBlocks and source.ip are `direct_remote_ip`, the TCP
peer; remoteIpBlocks and remote.ip are `remote_ip`, Envoy's client address).

Envoy shows a Wasm filter one address, `source.address`: the client address its connection
manager computed. With `use_remote_address: false` (Istio's inbound sidecar) that is the last
X-Forwarded-For entry, which the client writes; with `use_remote_address: true` and N trusted hops
(an Istio gateway with numTrustedProxies N) it is the client those proxies reported; only with
`use_remote_address: true` and no trusted hops is it the TCP peer. So remote.ip is that address
everywhere, exactly as Istio's, and a rule on source.ip is accepted only where the operator states
the one setup that shows the peer: anywhere else a forged X-Forwarded-For could satisfy an ALLOW
ipBlocks or sidestep a DENY, and the plugin refuses to start instead of guessing.
"""

from contextlib import contextmanager

import pytest

from testbed.config import jwt_rule
from testbed.envoy import start_envoy
from testbed.expect import expect_refused
from testbed.istio import native_filters

# Istio's connection-manager settings: the inbound sidecar listener, a gateway behind two trusted
# proxies (gatewayTopology.numTrustedProxies: 2), and an edge Envoy with no proxy in front.
SETUPS = {
    "sidecar": {"use_remote_address": False, "xff_num_trusted_hops": 0},
    "gateway": {"use_remote_address": True, "xff_num_trusted_hops": 2},
    "edge": {"use_remote_address": True, "xff_num_trusted_hops": 0},
}

OFFICE = "198.51.100.0/24"
BLOCKED = "203.0.113.0/24"

FORWARDED_FOR = [
    None,
    "198.51.100.4",
    "203.0.113.9",
    "203.0.113.9, 198.51.100.4",
    "198.51.100.4, 203.0.113.9",
    "198.51.100.4, 10.0.0.1, 10.0.0.2",
    "203.0.113.9, 198.51.100.4, 10.0.0.1",
    "garbage",
    "198.51.100.4:80",
    "::ffff:198.51.100.4",
    "198.51.100.4, garbage",
    " 198.51.100.4 ,  10.0.0.1 ",
    # The client's place behind one trusted proxy (the gateway's second entry from the right):
    # a port, an IPv4-mapped address, text that is no address.
    "198.51.100.4:80, 10.0.0.1",
    "::ffff:198.51.100.4, 10.0.0.1",
    "garbage, 10.0.0.1",
    "203.0.113.9:80, 10.0.0.1",
]


def remote_policies():
    return [
        {"name": "deny-blocked-clients", "action": "DENY", "rules": [
            {"from": [{"source": {"remoteIpBlocks": [BLOCKED]}}]}]},
        {"name": "office", "action": "ALLOW", "rules": [
            {"from": [{"source": {"remoteIpBlocks": [OFFICE]}}], "to": [{"operation": {"paths": ["/office/*"]}}]},
            {"to": [{"operation": {"paths": ["/office/public"]}}],
             "when": [{"key": "remote.ip", "notValues": [BLOCKED]}]},
            {"from": [{"source": {"notRemoteIpBlocks": [OFFICE, "10.0.0.0/8"]}}],
             "to": [{"operation": {"paths": ["/office/visitors"]}}]},
        ]},
    ]


def peer_policies():
    return [
        {"name": "never-from-documentation-peers", "action": "DENY", "rules": [
            {"from": [{"source": {"ipBlocks": [OFFICE, BLOCKED]}}]}]},
        {"name": "allow", "action": "ALLOW", "rules": [
            {"from": [{"source": {"ipBlocks": ["127.0.0.0/8"]}}], "to": [{"operation": {"paths": ["/loopback"]}}]},
            {"from": [{"source": {"ipBlocks": [OFFICE]}}], "to": [{"operation": {"paths": ["/office-peers"]}}]},
            {"to": [{"operation": {"paths": ["/not-loopback"]}}],
             "when": [{"key": "source.ip", "notValues": ["127.0.0.1"]}]},
        ]},
    ]


@contextmanager
def side_by_side(idp, backend, setup, plugin_config):
    """The plugin, and native jwt_authn + rbac as istiod writes them, behind the same connection manager."""
    native_config = {key: value for key, value in plugin_config.items() if key != "connectionManager"}
    filters = native_filters(native_config, {idp.jwks_uri: "idp"})
    with start_envoy(plugin_config, backend=backend, idp=idp, normalize_path=False, **SETUPS[setup]) as ours, \
            start_envoy(None, backend=backend, idp=idp, filters=filters, normalize_path=True, **SETUPS[setup]) as native:
        yield ours, native


def allowed(envoy, path, forwarded_for):
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else None
    status, response_headers, body = envoy.get(path, headers)
    if status == 200:
        assert response_headers.get("x-backend") == "demo", (status, body)
        return True
    # Denied without a token: 401 here, 403 from Envoy's rbac (the documented difference).
    assert status in (401, 403), (status, body)
    return False


@pytest.mark.parametrize("setup", SETUPS)
def test_remote_ip_is_envoys_client_address_in_every_setup(idp, backend, setup):
    config = {"jwtRules": [jwt_rule(idp)], "policies": remote_policies()}
    with side_by_side(idp, backend, setup, config) as (ours, native):
        outcomes = set()
        for forwarded_for in FORWARDED_FOR:
            for path in ["/office/x", "/office/public", "/office/visitors"]:
                ours_allowed = allowed(ours, path, forwarded_for)
                assert ours_allowed == allowed(native, path, forwarded_for), (setup, path, forwarded_for)
                outcomes.add(ours_allowed)
        assert outcomes == {True, False}, f"{setup}: the table must both allow and deny"


@pytest.mark.parametrize("setup, statement", [
    ("sidecar", None),
    ("sidecar", {"useRemoteAddress": False}),
    ("gateway", None),
    ("gateway", {"useRemoteAddress": True, "xffNumTrustedHops": 2}),
    # A statement that does not hold is the operator's mistake; an absent one is never guessed.
    ("edge", None),
])
def test_source_ip_rules_are_refused_where_envoy_does_not_show_the_peer(idp, backend, setup, statement):
    config = {"jwtRules": [jwt_rule(idp)], "policies": peer_policies()}
    if statement is not None:
        config["connectionManager"] = statement
    with start_envoy(config, backend=backend, idp=idp, expect_failure=True, **SETUPS[setup]) as envoy:
        expect_refused(envoy, ["policies[0].rules[0].from[0].source.ipBlocks", "use_remote_address"])


@pytest.mark.parametrize("setup", ["sidecar", "gateway"])
def test_native_rbac_reads_the_peer_where_a_forged_header_would_fool_source_address(idp, backend, setup):
    """Why the refusal: in these setups Istio's ipBlocks is the TCP peer (loopback here), and Envoy's
    source.address, all a Wasm filter sees, follows the forged X-Forwarded-For instead."""
    config = {"jwtRules": [jwt_rule(idp)], "policies": peer_policies()}
    filters = native_filters(config, {idp.jwks_uri: "idp"})
    forged = "198.51.100.7" if setup == "sidecar" else "198.51.100.7, 10.0.0.1"
    with start_envoy(None, backend=backend, idp=idp, filters=filters, **SETUPS[setup]) as native:
        assert allowed(native, "/loopback", forged)
        assert not allowed(native, "/office-peers", forged)


def test_source_ip_is_the_peer_not_the_forwarded_for_header(idp, backend):
    """At the edge, stated: the peer is 127.0.0.1. A DENY on documentation addresses must not trigger
    on X-Forwarded-For text, an ALLOW for loopback peers must hold whatever it claims, and an ALLOW
    for office peers must not be reachable by claiming an office address."""
    config = {"jwtRules": [jwt_rule(idp)], "policies": peer_policies(),
              "connectionManager": {"useRemoteAddress": True}}
    with side_by_side(idp, backend, "edge", config) as (ours, native):
        for forwarded_for in FORWARDED_FOR:
            for path in ["/loopback", "/office-peers", "/not-loopback"]:
                ours_allowed = allowed(ours, path, forwarded_for)
                assert ours_allowed == allowed(native, path, forwarded_for), (path, forwarded_for)
                assert ours_allowed == (path == "/loopback"), (path, forwarded_for)
