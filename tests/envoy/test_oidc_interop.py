"""Interop with a real OpenID Provider: node-oidc-provider (OpenID-certified) issues client_credentials
JWT access tokens signed with RS256, PS256, ES256 and EdDSA (one resource server per algorithm, each
algorithm with its own key); the filter in real Envoy fetches its JWKS and accepts them, and rejects
tampered ones.

jwksUri is given explicitly (read here from the provider's discovery document); the filter's own
OIDC discovery is tested where it is built.
"""

import base64
import json
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from testbed.envoy import start_envoy
from testbed.expect import bearer
from testbed.net import http_request
from testbed.paths import REPO_ROOT
from testbed.services import stop_process
from testbed.tokens import b64url, b64url_decode

SERVER = Path(__file__).with_name("oidc_provider.mjs")
CLIENT_ID, CLIENT_SECRET = "shop-service", "shop-service-secret"
# The resource indicator (RFC 8707) whose access tokens oidc_provider.mjs signs with each algorithm;
# None: no indicator, the provider's default resource (RS256).
RESOURCES = {
    "RS256": None,
    "PS256": "https://shop.example/api/ps256",
    "ES256": "https://shop.example/api/es256",
    "EdDSA": "https://shop.example/api/eddsa",
}
ALGORITHMS = list(RESOURCES)
# What a key of each algorithm is in the provider's JWKS.
KEY_TYPES = {"RS256": ("RSA", None), "PS256": ("RSA", None), "ES256": ("EC", "P-256"), "EdDSA": ("OKP", "Ed25519")}


class OpenIdProvider:
    def __init__(self, port):
        self.port = port
        status, _, text = http_request(port, "GET", "/.well-known/openid-configuration")
        assert status == 200, text
        self.discovery = json.loads(text)
        self.issuer = self.discovery["issuer"]

    def path_of(self, endpoint):
        url = urlsplit(self.discovery[endpoint])
        assert (url.hostname, url.port) == ("127.0.0.1", self.port), url
        return url.path

    def jwks(self):
        status, _, text = http_request(self.port, "GET", self.path_of("jwks_uri"))
        assert status == 200, text
        return json.loads(text)

    def client_credentials_token(self, alg="RS256"):
        """An access token for the resource server whose tokens are signed with alg."""
        credentials = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        form = {"grant_type": "client_credentials", "scope": "orders:read"}
        if RESOURCES[alg]:
            form["resource"] = RESOURCES[alg]
        status, _, text = http_request(
            self.port, "POST", self.path_of("token_endpoint"),
            {"Authorization": f"Basic {credentials}", "Content-Type": "application/x-www-form-urlencoded"},
            urlencode(form),
        )
        assert status == 200, text
        answer = json.loads(text)
        assert answer["token_type"] == "Bearer"
        return answer["access_token"]


@contextmanager
def start_oidc_provider(workdir):
    node = shutil.which("node")
    assert node, "node is not installed: `make test` installs it"
    assert (REPO_ROOT / "node_modules" / "oidc-provider").is_dir(), "run `make test` (npm ci installs oidc-provider)"
    port_file = Path(workdir) / "oidc.port"
    log = open(Path(workdir) / "oidc-provider.log", "wb")
    process = subprocess.Popen([node, str(SERVER), str(port_file)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"oidc-provider did not start: {(Path(workdir) / 'oidc-provider.log').read_text()}")
            time.sleep(0.05)
        yield OpenIdProvider(int(port_file.read_text()))
    finally:
        stop_process(process)
        log.close()


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    with start_oidc_provider(tmp_path_factory.mktemp("oidc")) as running:
        yield running


# Both signature backends: with "auto" Envoy's verify_signature checks RS256 and ES256, with "vm" the
# filter's own code checks all four, so each meets tokens it did not make either way.
@pytest.fixture(scope="module", params=["auto", "vm"], ids=lambda backend: f"backend-{backend}")
def envoy(provider, backend, request):
    config = {
        "signatureBackend": request.param,
        "jwtRules": [{
            "issuer": provider.issuer,
            "audiences": ["shop"],
            "jwksUri": provider.discovery["jwks_uri"],
            "jwksCluster": "oidc",
            "outputClaimToHeaders": [{"header": "x-client-id", "claim": "client_id"}],
        }],
        "policies": [{"name": "services", "rules": [{
            "from": [{"source": {"requestPrincipals": [f"{provider.issuer}/{CLIENT_ID}"]}}],
            "when": [{"key": "request.auth.claims[scope]", "values": ["orders:read"]}],
        }]}],
    }
    with start_envoy(config, backend=backend, clusters={"oidc": provider.port}) as running:
        yield running


def decode(segment):
    return json.loads(b64url_decode(segment))


def test_the_provider_publishes_one_key_per_algorithm_bound_to_it(provider):
    keys = [key for key in provider.jwks()["keys"] if key.get("use") == "sig"]
    assert sorted(key["alg"] for key in keys) == sorted(ALGORITHMS)
    for key in keys:
        kty, crv = KEY_TYPES[key["alg"]]
        assert (key["kty"], key.get("crv")) == (kty, crv), key
        assert "d" not in key, "a private key in the JWKS"
    assert len({key["kid"] for key in keys}) == len(keys)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_the_provider_issues_jwt_access_tokens_with_each_algorithm(provider, alg):
    header, payload, _ = provider.client_credentials_token(alg).split(".")
    header, payload = decode(header), decode(payload)
    assert (header["alg"], header["typ"]) == (alg, "at+jwt")
    assert (payload["iss"], payload["aud"], payload["client_id"]) == (provider.issuer, "shop", CLIENT_ID)
    [key] = [key for key in provider.jwks()["keys"] if key["kid"] == header["kid"]]
    assert key["alg"] == alg


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_a_token_from_the_provider_is_accepted(provider, envoy, alg):
    status, headers, body = envoy.get("/orders", bearer(provider.client_credentials_token(alg)))
    assert (status, headers.get("x-backend")) == (200, "demo"), body
    echo = json.loads(body)
    forwarded = {name.lower(): value for name, value in echo["headers"].items()}
    assert forwarded.get("x-client-id") == CLIENT_ID
    assert "authorization" not in forwarded, "the token must not reach the backend"


def other_algorithm(alg):
    return ALGORITHMS[(ALGORITHMS.index(alg) + 1) % len(ALGORITHMS)]


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_tampered_tokens_are_rejected(provider, envoy, alg):
    header, payload, signature = provider.client_credentials_token(alg).split(".")
    claims, head = decode(payload), decode(header)
    raised = b64url(json.dumps({**claims, "scope": "orders:read orders:write"}))
    other_client = b64url(json.dumps({**claims, "client_id": "intruder", "sub": "intruder"}))
    flipped = signature[:-4] + ("AAAA" if not signature.endswith("AAAA") else "BBBB")
    # The provider's own signature over these claims, with another algorithm named for the key
    # (its JWK's alg binds the key to one algorithm), or another algorithm's key named.
    other_alg = b64url(json.dumps({**head, "alg": other_algorithm(alg)}))
    [other_kid] = [key["kid"] for key in provider.jwks()["keys"] if key["alg"] == other_algorithm(alg)]
    other_key = b64url(json.dumps({**head, "kid": other_kid}))
    # A signature the provider made with another algorithm's key, over other claims.
    foreign = provider.client_credentials_token(other_algorithm(alg)).split(".")[2]
    for token in (f"{header}.{raised}.{signature}", f"{header}.{other_client}.{signature}",
                  f"{header}.{payload}.{flipped}", f"{header}.{payload}.",
                  f"{other_alg}.{payload}.{signature}", f"{other_key}.{payload}.{signature}",
                  f"{header}.{payload}.{foreign}"):
        status, headers, body = envoy.get("/orders", bearer(token))
        assert status == 401, (token, body)
        assert 'error="invalid_token"' in headers.get("www-authenticate", ""), headers
    assert envoy.get("/orders")[0] == 401, "no token: who are you?"


def test_the_provider_s_key_set_was_fetched_over_its_jwks_uri(provider, envoy):
    # The token was accepted with keys from nowhere else: the config has no inline keys, and the
    # only cluster the filter can reach for them is the provider's.
    samples = envoy.prometheus()
    assert samples.get(("jwt_authz_jwks_fetch_success_total", ()), 0) >= 1
    assert samples.get(("jwt_authz_jwks_fetch_failure_total", ()), 0) == 0
