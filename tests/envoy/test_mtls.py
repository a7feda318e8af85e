"""mTLS peer identities in real Envoy: principals, namespaces, serviceAccounts, trustDomains, the
source.principal / source.namespace keys, connection.sni and destination.ip, side by side with
Envoy's native RBAC configured the way istiod translates the same policy (testbed/istio.py).

Listeners: one requiring a client certificate, one where it is optional, one plaintext. Client
certificates carry SPIFFE URI SANs, as Istio's workload certificates do, minted here by a
throwaway CA. A connection without a peer certificate never matches a positive mTLS condition.
"""

import hashlib
import http.client
import json
import ssl
from urllib.parse import urlencode

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from testbed.config import jwt_rule
from testbed.envoy import start_envoy
from testbed.expect import denial_reason
from testbed.istio import native_filters
from testbed.net import free_ports, http_request
from testbed.tls import Authority, https_request
from testbed.services import start_idp
from testbed.tokens import b64url, mint, token_payload

CART = "spiffe://cluster.local/ns/shop/sa/cart"
WEB = "spiffe://cluster.local/ns/web-1/sa/web"
PAY = "spiffe://cluster.local/ns/billing/team/sa/pay"
EVIL = "spiffe://evil.td/ns/shop/sa/cart"
OLD = "spiffe://old.td/ns/shop/sa/cart"
FOO = "spiffe://foo.td/ns/shop/sa/cart"


def policies():
    return [
        {"name": "no-evil-domains", "action": "DENY", "rules": [{"from": [{"source": {"trustDomains": ["evil*"]}}]}]},
        {"name": "peers", "action": "ALLOW", "rules": [
            {"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/cart"]}}], "to": [{"operation": {"paths": ["/cart/*"]}}]},
            {"from": [{"source": {"namespaces": ["web-*"]}}], "to": [{"operation": {"paths": ["/web/*"]}}]},
            {"from": [{"source": {"serviceAccounts": ["billing/pay"]}}], "to": [{"operation": {"paths": ["/pay/*"]}}]},
            {"from": [{"source": {"principals": ["*"], "notServiceAccounts": ["shop/cart", "billing/pay"]}}],
             "to": [{"operation": {"paths": ["/not-sa"]}}]},
            {"from": [{"source": {"principals": ["*"]}}], "to": [{"operation": {"paths": ["/any-peer"]}}]},
            {"from": [{"source": {"notPrincipals": ["*"]}}], "to": [{"operation": {"paths": ["/no-peer"]}}]},
            {"from": [{"source": {"principals": ["*/sa/web"], "notNamespaces": ["shop"]}}],
             "to": [{"operation": {"paths": ["/web-sa"]}}]},
            {"from": [{"source": {"notTrustDomains": ["cluster.local"]}}], "to": [{"operation": {"paths": ["/foreign"]}}]},
            {"to": [{"operation": {"paths": ["/by-ns"]}}], "when": [{"key": "source.namespace", "values": ["shop", "billing"]}]},
            {"to": [{"operation": {"paths": ["/not-cart"]}}],
             "when": [{"key": "source.principal", "notValues": ["cluster.local/ns/shop/*"]}]},
            {"to": [{"operation": {"paths": ["/sni"]}}], "when": [{"key": "connection.sni", "values": ["*.example"]}]},
            {"to": [{"operation": {"paths": ["/dest"]}}], "when": [{"key": "destination.ip", "values": ["127.0.0.0/8"]}]},
            {"to": [{"operation": {"paths": ["/not-dest"]}}], "when": [{"key": "destination.ip", "notValues": ["127.0.0.1"]}]},
        ]},
    ]


PATHS = ["/cart/x", "/web/x", "/pay/x", "/not-sa", "/any-peer", "/no-peer", "/web-sa", "/foreign", "/by-ns", "/not-cart",
         "/sni", "/dest", "/not-dest"]


@pytest.fixture(scope="module")
def authority(tmp_path_factory):
    ca = Authority(tmp_path_factory.mktemp("pki"))
    clients = {name: ca.spiffe_client(uri) for name, uri in
               {"cart": CART, "web": WEB, "pay": PAY, "evil": EVIL, "old": OLD, "foo": FOO}.items()}
    return ca, clients


def start(idp, backend, authority, config, native):
    ca, _ = authority
    ports = free_ports(3)
    listeners = {"ingress": ports[0], "mtls": ports[1], "tls": ports[2]}
    tls = {"mtls": ca.server(require_client_certificate=True), "tls": ca.server(require_client_certificate=False)}
    if native:
        filters = native_filters(config, {idp.jwks_uri: "idp"})
        return start_envoy(None, backend=backend, idp=idp, filters=filters, listeners=listeners, listener_tls=tls)
    return start_envoy(config, backend=backend, idp=idp, listeners=listeners, listener_tls=tls, normalize_path=False)


@pytest.fixture(scope="module")
def envoys(idp, backend, authority):
    config = {"jwtRules": [jwt_rule(idp)], "policies": policies()}
    with start(idp, backend, authority, config, native=False) as ours, \
            start(idp, backend, authority, config, native=True) as native:
        yield ours, native


def allowed(envoy, authority, who, listener, path, sni="shop.example"):
    ca, clients = authority
    if listener == "ingress":
        status, headers, body = http_request(envoy.ports["ingress"], "GET", path)
    else:
        status, headers, body = https_request(envoy.ports[listener], path, client=clients.get(who), ca=ca.ca_path,
                                              server_name=sni)
    if status == 200:
        assert headers.get("x-backend") == "demo", (status, body)
        return True
    assert status in (401, 403), (status, body)
    return False


CALLERS = [("cart", "mtls"), ("web", "mtls"), ("pay", "mtls"), ("evil", "mtls"), ("old", "mtls"),
           ("cart", "tls"), (None, "tls"), (None, "ingress")]


@pytest.mark.parametrize("who, listener", CALLERS, ids=[f"{w or 'no-cert'}-{l}" for w, l in CALLERS])
def test_same_decision_as_istio_native_rbac(envoys, authority, who, listener):
    ours, native = envoys
    decisions = {}
    for path in PATHS:
        ours_allowed = allowed(ours, authority, who, listener, path)
        assert ours_allowed == allowed(native, authority, who, listener, path), (who, listener, path)
        decisions[path] = ours_allowed
    # What each caller may reach, so the table cannot agree by allowing or denying everything.
    expected = {
        ("cart", "mtls"): {"/cart/x", "/any-peer", "/by-ns", "/sni", "/dest"},
        ("web", "mtls"): {"/web/x", "/not-sa", "/any-peer", "/web-sa", "/not-cart", "/sni", "/dest"},
        ("pay", "mtls"): {"/pay/x", "/any-peer", "/by-ns", "/not-cart", "/sni", "/dest"},
        ("evil", "mtls"): set(),
        # serviceAccounts match in any trust domain: old.td/.../sa/cart is shop/cart to Istio too.
        ("old", "mtls"): {"/any-peer", "/foreign", "/by-ns", "/not-cart", "/sni", "/dest"},
        ("cart", "tls"): {"/cart/x", "/any-peer", "/by-ns", "/sni", "/dest"},
        # Without a peer certificate only negative conditions hold (notPrincipals, notTrustDomains,
        # notValues), as Istio's not_id of an `authenticated` principal does.
        (None, "tls"): {"/no-peer", "/foreign", "/not-cart", "/sni", "/dest"},
        (None, "ingress"): {"/no-peer", "/foreign", "/not-cart", "/dest"},
    }[(who, listener)]
    assert {path for path, yes in decisions.items() if yes} == expected


@pytest.mark.parametrize("sni, reaches", [("shop.example", True), ("api.example", True), ("other.test", False)])
def test_sni_is_the_server_name_the_client_asked_for(envoys, authority, sni, reaches):
    ours, native = envoys
    assert allowed(ours, authority, "cart", "mtls", "/sni", sni=sni) == reaches
    assert allowed(native, authority, "cart", "mtls", "/sni", sni=sni) == reaches


def test_trust_domain_aliases_make_a_principal_match_in_each_domain(idp, backend, authority):
    config = {"jwtRules": [jwt_rule(idp)], "policies": policies(), "trustDomainAliases": ["old.td"]}
    with start(idp, backend, authority, config, native=False) as ours:
        assert allowed(ours, authority, "old", "mtls", "/cart/x")
        assert not allowed(ours, authority, "web", "mtls", "/cart/x")
        # The evil domain is no alias: its certificate for the same workload gets nothing.
        assert not allowed(ours, authority, "evil", "mtls", "/cart/x")


def test_cluster_local_stands_for_the_mesh_trust_domain(idp, backend, authority):
    """As istiod rewrites it: in a mesh whose trust domain is foo.td, cluster.local/ns/shop/sa/cart
    is spiffe://foo.td/ns/shop/sa/cart, and the literal cluster.local identity is no longer it."""
    config = {"jwtRules": [jwt_rule(idp)], "policies": policies(), "trustDomain": "foo.td"}
    with start(idp, backend, authority, config, native=False) as ours:
        assert allowed(ours, authority, "foo", "mtls", "/cart/x")
        assert not allowed(ours, authority, "cart", "mtls", "/cart/x")


# --- Certificate-bound tokens (RFC 8705) -----------------------------------------------------------

BOUND = "Jwt is bound to a client certificate the connection does not present"
BAD_CNF = "Jwt [cnf] claim is not valid"


def thumbprint(client):
    """x5t#S256 of a client certificate: base64url(SHA-256(DER)), as the token's cnf carries it."""
    der = x509.load_pem_x509_certificate(client.cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    return b64url(hashlib.sha256(der).digest())


@pytest.fixture(scope="module")
def bound_envoy(idp, backend, authority):
    """Any verified caller is allowed: what a bound token changes is whether it is verified."""
    config = {"jwtRules": [jwt_rule(idp)],
              "policies": [{"name": "users", "action": "ALLOW", "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}]}
    with start(idp, backend, authority, config, native=False) as envoy:
        yield envoy


def send(envoy, authority, who, listener, path, token):
    ca, clients = authority
    headers = {"Authorization": f"Bearer {token}"}
    if listener == "ingress":
        return http_request(envoy.ports["ingress"], "GET", path, headers)
    return https_request(envoy.ports[listener], path, client=clients.get(who), ca=ca.ca_path, headers=headers)


@pytest.mark.parametrize("who, listener, passes", [
    ("cart", "mtls", True), ("cart", "tls", True),
    ("web", "mtls", False), ("web", "tls", False), (None, "tls", False), (None, "ingress", False),
], ids=["own-cert-mtls", "own-cert-tls", "other-cert-mtls", "other-cert-tls", "no-cert-tls", "plaintext"])
def test_a_bound_token_passes_only_with_its_certificate(bound_envoy, authority, idp, who, listener, passes):
    _, clients = authority
    token = mint(idp, "bob", cnf={"x5t#S256": thumbprint(clients["cart"])})
    for attempt in (1, 2):  # the second through the verified-token cache, which must not skip the check
        path = f"/bound/{who}-{listener}/{attempt}"
        status, headers, body = send(bound_envoy, authority, who, listener, path, token)
        if passes:
            assert (status, headers.get("x-backend")) == (200, "demo"), (status, body)
        else:
            assert status == 401 and body == BOUND, (status, headers, body)
            assert headers.get("www-authenticate", "").endswith(f'error="invalid_token", error_description="{BOUND}"')
            assert denial_reason(bound_envoy, path) == "jwt_certificate_mismatch"


def test_unbound_tokens_are_bearer_tokens_and_key_bound_ones_are_not(bound_envoy, authority, idp):
    status, headers, body = send(bound_envoy, authority, None, "ingress", "/unbound/bearer", mint(idp, "bob"))
    assert (status, headers.get("x-backend")) == (200, "demo"), (status, body)
    # Bound to a DPoP key instead (cnf.jkt): never a bearer token either (test_dpop.py).
    path = "/unbound/dpop-jkt"
    status, _, body = send(bound_envoy, authority, None, "ingress", path, mint(idp, "bob", cnf={"jkt": "A" * 43}))
    assert status == 401 and denial_reason(bound_envoy, path) == "dpop_bearer_downgrade", (status, body)


@pytest.mark.parametrize("cnf", ["x", {"x5t#S256": 5}, {"x5t#S256": "AAAA"}, {"x5t#S256": "not base64url!"}],
                         ids=["not-object", "number", "short", "not-base64url"])
def test_a_binding_that_cannot_be_read_refuses_the_token(bound_envoy, authority, idp, cnf):
    path = f"/bad-cnf/{json.dumps(cnf).encode().hex()}"
    status, headers, body = send(bound_envoy, authority, "cart", "mtls", path, mint(idp, "bob", cnf=cnf))
    assert (status, body) == (401, BAD_CNF), (status, body)
    assert denial_reason(bound_envoy, path) == "jwt_cnf_invalid"


def test_a_bound_token_beside_a_bearer_token_is_still_held_to_its_certificate(bound_envoy, authority, idp):
    _, clients = authority
    stolen = mint(idp, "alice", cnf={"x5t#S256": thumbprint(clients["cart"])})
    path = f"/two-tokens?access_token={stolen}"
    status, headers, body = send(bound_envoy, authority, None, "ingress", path, mint(idp, "bob"))
    assert (status, body) == (401, BOUND), (status, body)
    assert denial_reason(bound_envoy, "/two-tokens") == "jwt_certificate_mismatch"


# --- The dev IdP issues certificate-bound tokens, as Keycloak does -----------------------------------

PARTNER = {"grant_type": "client_credentials", "client_id": "shop-partner", "client_secret": "shop-partner-secret"}


@pytest.fixture(scope="module")
def tls_idp(tmp_path_factory, authority):
    """tools/devidp.py also serving HTTPS, asking for client certificates of the test CA."""
    ca, _ = authority
    server = ca.server(require_client_certificate=False)
    workdir = tmp_path_factory.mktemp("tls-idp")
    port_file = workdir / "tls.port"
    with start_idp(workdir, "--tls-port", "0", "--tls-cert", str(server.cert), "--tls-key", str(server.key),
                   "--tls-client-ca", str(ca.ca_path), "--tls-port-file", str(port_file)) as idp:
        yield idp, int(port_file.read_text())


def partner_token(tls_idp, authority, who):
    """The shop-partner client's client_credentials token over TLS, with `who`'s certificate."""
    idp, tls_port = tls_idp
    ca, clients = authority
    context = ssl.create_default_context(cafile=str(ca.ca_path))
    context.check_hostname = False
    if who is not None:
        context.load_cert_chain(str(clients[who].cert), str(clients[who].key))
    connection = http.client.HTTPSConnection("127.0.0.1", tls_port, timeout=10, context=context)
    try:
        connection.request("POST", f"{idp.realm_path}/protocol/openid-connect/token", body=urlencode(PARTNER),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def partner_envoy(tls_idp, backend, authority):
    idp, _ = tls_idp
    config = {"jwtRules": [jwt_rule(idp)],
              "policies": [{"name": "users", "action": "ALLOW", "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}]}
    with start(idp, backend, authority, config, native=False) as envoy:
        yield envoy


def test_the_dev_idp_binds_a_partner_token_to_the_certificate_it_presented(tls_idp, partner_envoy, authority):
    _, clients = authority
    status, answer = partner_token(tls_idp, authority, "cart")
    assert status == 200, answer
    token = answer["access_token"]
    assert token_payload(token)["cnf"] == {"x5t#S256": thumbprint(clients["cart"])}
    status, headers, body = send(partner_envoy, authority, "cart", "mtls", "/partner/cart", token)
    assert (status, headers.get("x-backend")) == (200, "demo"), (status, body)
    status, _, body = send(partner_envoy, authority, "web", "mtls", "/partner/web", token)
    assert (status, body) == (401, BOUND), (status, body)
    assert denial_reason(partner_envoy, "/partner/web") == "jwt_certificate_mismatch"


def test_without_a_client_certificate_the_dev_idp_issues_no_partner_token(tls_idp, authority):
    idp, _ = tls_idp
    assert partner_token(tls_idp, authority, None) == (
        400, {"error": "invalid_request", "error_description": "Client Certification missing for MTLS HoK Token Binding"})
    status, answer = idp.token_request(PARTNER)  # plain HTTP: no certificate at all
    assert (status, answer["error"]) == (400, "invalid_request"), answer
    # Other clients are unaffected: bearer tokens, no cnf.
    assert "cnf" not in token_payload(idp.client_credentials_token())
