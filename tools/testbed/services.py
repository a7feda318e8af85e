"""The services behind Envoy, as processes: tools/devidp.py (a Keycloak-shaped identity provider,
also a plain JWKS server for keys of any type: serve_jwks) and tools/backend.py (the echo
backend), each with a small client."""

import base64
import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

from cryptography.hazmat.primitives import serialization

from devidp import DEFAULT_REALM, user_id  # noqa: F401  (re-exported: the IdP's realm data)

from .net import http_request
from .paths import TOOLS_DIR

STARTUP_TIMEOUT = 15.0


@contextmanager
def run_tool(script, workdir, *args):
    """Run a tools/ script with --port 0 --port-file; yields (process, port)."""
    port_file = Path(workdir) / f"{Path(script).stem}.port"
    port_file.unlink(missing_ok=True)
    log = open(Path(workdir) / f"{Path(script).stem}.log", "wb")
    command = [sys.executable, str(TOOLS_DIR / script), "--port", "0", "--port-file", str(port_file), *args]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{script} did not start; see {log.name}")
            time.sleep(0.02)
        yield process, int(port_file.read_text())
    finally:
        stop_process(process)
        log.close()


def stop_process(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Idp:
    """Client for a running tools/devidp.py started with --test-endpoints."""

    def __init__(self, port, key_file):
        self.port = port
        self.key_file = Path(key_file)
        self.realm_path = "/realms/shop"
        self.issuer = f"http://127.0.0.1:{port}{self.realm_path}"
        self.jwks_uri = f"{self.issuer}/protocol/openid-connect/certs"
        self.token_url = f"{self.issuer}/protocol/openid-connect/token"
        self.certs_mode_changed = False
        self.private_key = self._load_key()
        self.kid = self.signing_jwk("RS256")["kid"]

    def _load_key(self):
        return serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)

    def _json(self, method, path, document=None):
        body = None if document is None else json.dumps(document)
        status, _, text = http_request(self.port, method, path, {"Content-Type": "application/json"}, body)
        if status != 200:
            raise RuntimeError(f"{method} {path} -> {status}: {text}")
        return json.loads(text)

    def certs_text(self):
        status, _, text = http_request(self.port, "GET", f"{self.realm_path}/protocol/openid-connect/certs")
        assert status == 200, text
        return text

    def certs(self):
        return json.loads(self.certs_text())

    def signing_jwk(self, alg):
        """The JWK of the active signing key for alg (the IdP publishes each algorithm's active key
        ahead of its passive ones)."""
        return next(key for key in self.certs()["keys"] if key["use"] == "sig" and key["alg"] == alg)

    def signing_jwks(self):
        """Every signing key the IdP publishes, active and passive, of all its algorithms."""
        return [key for key in self.certs()["keys"] if key["use"] == "sig"]

    def hits(self):
        return self._json("GET", "/_test/hits")

    def certs_mode(self, **mode):
        """Set how /certs answers: status=, delay= (seconds), body= (raw text), headers= (extra
        response headers); unset fields reset."""
        self.certs_mode_changed = True
        return self._json("POST", "/_test/certs-mode", mode)

    def reset_certs_mode(self):
        self.certs_mode_changed = False
        return self._json("POST", "/_test/certs-mode", {})

    def introspection_mode(self, status=200, delay=0.0):
        """Set how the introspection endpoint answers: another status (an outage), a delay."""
        return self._json("POST", "/_test/introspection-mode", {"status": status, "delay": delay})

    def opaque_token(self, user="bob"):
        """An opaque access token of the shop-opaque client for a built-in user."""
        return self.password_token(user, user, client_id="shop-opaque")

    def revoke(self, token, client=("shop-backend", "shop-backend-secret")):
        form = urlencode({"token": token})
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "Authorization": "Basic " + base64.b64encode(":".join(client).encode()).decode()}
        status, _, _ = http_request(self.port, "POST", f"{self.realm_path}/protocol/openid-connect/revoke", headers, form)
        return status

    def rotate(self, keep_previous=False, alg="RS256"):
        """New signing key for alg at the IdP (the old one kept as a passive key if asked); returns
        its kid. private_key and kid are the RS256 key's, and follow its rotation."""
        kid = self._json("POST", "/_test/rotate", {"keepPrevious": keep_previous, "alg": alg})["kid"]
        if alg == "RS256":
            self.kid = kid
            self.private_key = self._load_key()
        return kid

    def token_request(self, form, basic_auth=None, path_prefix="", dpop=None):
        """POST a form to the token endpoint (under `path_prefix`, e.g. Keycloak < 17's /auth),
        with a DPoP proof when given; returns (status, JSON answer)."""
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if dpop:
            headers["DPoP"] = dpop
        if basic_auth:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(basic_auth).encode()).decode()
        body = urlencode(form)
        status, _, text = http_request(self.port, "POST", f"{path_prefix}{self.realm_path}/protocol/openid-connect/token",
                                       headers, body)
        return status, json.loads(text)

    def password_token(self, user, password, client_id="shop-web", client_secret=None):
        form = {"grant_type": "password", "client_id": client_id, "username": user, "password": password}
        if client_secret:
            form["client_secret"] = client_secret
        status, answer = self.token_request(form)
        assert status == 200, answer
        return answer["access_token"]

    def client_credentials_token(self, client_id="shop-backend", client_secret="shop-backend-secret"):
        form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret}
        status, answer = self.token_request(form)
        assert status == 200, answer
        return answer["access_token"]


@contextmanager
def start_idp(workdir, *args):
    """Run tools/devidp.py with test endpoints, a key file in workdir and args; yields an Idp."""
    key_file = Path(workdir) / "idp-key.pem"
    with run_tool("devidp.py", workdir, "--key-file", str(key_file), "--test-endpoints", *args) as (_, port):
        yield Idp(port, key_file)


@contextmanager
def serve_jwks(workdir, jwks):
    """A real HTTP JWKS server: a dev IdP whose certs endpoint (its jwks_uri) answers exactly this
    key set (a dict, or raw text) instead of its own keys; yields the Idp."""
    with start_idp(workdir) as server:
        server.certs_mode(body=jwks if isinstance(jwks, str) else json.dumps(jwks))
        yield server


class Backend:
    """The running echo backend."""

    def __init__(self, port):
        self.port = port

    def get(self, path, headers=None, method="GET"):
        return http_request(self.port, method, path, headers)


@contextmanager
def start_backend(workdir):
    with run_tool("backend.py", workdir) as (_, port):
        yield Backend(port)
