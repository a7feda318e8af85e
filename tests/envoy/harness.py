"""Harness for testing the jwt-authz filter in real Envoy: local IdP, echo backend, token minting."""

import base64
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO_ROOT / "tools"
ENVOY_BIN = Path(os.environ.get("ENVOY_BIN", REPO_ROOT / ".venv" / "bin" / "envoy"))
WASM_PATH = Path(os.environ.get("JWT_AUTHZ_WASM", REPO_ROOT / "dist" / "plugin.wasm"))
STARTUP_TIMEOUT = 15.0
EXTENSION_LIST_LINE = re.compile(r"\]\s{3}[a-z_.]+: |statically linked extensions")
PROMETHEUS_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
PROMETHEUS_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

sys.path.insert(0, str(TOOLS_DIR))
from devidp import DEFAULT_REALM, user_id  # noqa: E402  (the IdP's realm data is the single source)

# Envoys currently running, so conftest can attach their log tails to failing tests.
RUNNING_ENVOYS = []
# Where Envoy work directories go; conftest points it at pytest's tmp dir (kept for inspection).
WORK_ROOT = None


# --- JWT encoding -------------------------------------------------------------------------------

def b64url(data):
    """Base64url without padding, as JWTs use it."""
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def json_segment(document):
    return b64url(json.dumps(document, separators=(",", ":")))


def raw_token(header, payload, signature=b""):
    """Assemble a token from parts: dicts are JSON-encoded, bytes base64url-encoded, str used verbatim."""
    def segment(part):
        if isinstance(part, (dict, list)):
            return json_segment(part)
        if isinstance(part, bytes):
            return b64url(part)
        return part
    return ".".join(segment(part) for part in (header, payload, signature))


def sign_rs256(signing_input, private_key):
    return private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())


def token_payload(token):
    """The decoded payload of a compact JWT."""
    return json.loads(b64url_decode(token.split(".")[1]))


def keycloak_payload(issuer, username, client_id="shop-web"):
    """Claims shaped like a Keycloak access token from a password grant for a built-in user."""
    user = DEFAULT_REALM["users"][username]
    now = int(time.time())
    return {
        "exp": now + 300,
        "iat": now,
        "auth_time": now,
        "jti": f"test-{time.monotonic_ns()}",
        "iss": issuer,
        "aud": ["shop", "account"],
        "sub": user_id(DEFAULT_REALM["realm"], username),
        "typ": "Bearer",
        "azp": client_id,
        "session_state": "test-session",
        "acr": "1",
        "allowed-origins": ["*"],
        "realm_access": {"roles": ["default-roles-shop", "offline_access"] + user["realmRoles"]},
        "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
        "scope": "openid profile email",
        "email_verified": True,
        "name": f"{user['firstName']} {user['lastName']}",
        "preferred_username": username,
        "given_name": user["firstName"],
        "family_name": user["lastName"],
        "email": user["email"],
    }


def apply_overrides(document, overrides):
    """Copy of document with overrides applied; an override of None deletes the entry."""
    result = dict(document)
    for name, value in overrides.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def mint(idp, user="alice", *, header=None, key=None, claims=None, **overrides):
    """An RS256 token for a built-in user, signed with the IdP key unless key is given.

    claims and keyword overrides replace payload claims (None deletes one; claims allows names
    such as "allowed-origins"); header replaces header fields the same way.
    """
    payload = apply_overrides(keycloak_payload(idp.issuer, user), {**(claims or {}), **overrides})
    head = apply_overrides({"alg": "RS256", "typ": "JWT", "kid": idp.kid}, header or {})
    signing_input = f"{json_segment(head)}.{json_segment(payload)}"
    return f"{signing_input}.{b64url(sign_rs256(signing_input, key or idp.private_key))}"


# --- HTTP client ----------------------------------------------------------------------------------

def http_request(port, method, path, headers=None, body=None, timeout=10.0):
    """Send one request with the path exactly as given; returns (status, headers, body text)."""
    headers = dict(headers or {})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        has_host = any(name.lower() == "host" for name in headers)
        connection.putrequest(method, path, skip_host=has_host, skip_accept_encoding=True)
        if isinstance(body, str):
            body = body.encode()
        if body is not None:
            headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        text = response.read().decode("utf-8", errors="replace")
        response_headers = {}
        for name, value in response.getheaders():
            name = name.lower()
            response_headers[name] = f"{response_headers[name]}, {value}" if name in response_headers else value
        return response.status, response_headers, text
    finally:
        connection.close()


# --- Helper processes -----------------------------------------------------------------------------

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
        self.kid = next(key["kid"] for key in self.certs()["keys"] if key["use"] == "sig")

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

    def rotate(self, keep_previous=False):
        """New signing key at the IdP (the old one kept as a passive key if asked); private_key and
        kid follow it."""
        self.kid = self._json("POST", "/_test/rotate", {"keepPrevious": keep_previous})["kid"]
        self.private_key = self._load_key()
        return self.kid

    def token_request(self, form, basic_auth=None):
        """POST a form to the token endpoint; returns (status, JSON answer)."""
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if basic_auth:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(basic_auth).encode()).decode()
        body = urlencode(form)
        status, _, text = http_request(self.port, "POST", f"{self.realm_path}/protocol/openid-connect/token", headers, body)
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
def start_idp(workdir):
    """Run tools/devidp.py with test endpoints and a key file in workdir; yields an Idp."""
    key_file = Path(workdir) / "idp-key.pem"
    with run_tool("devidp.py", workdir, "--key-file", str(key_file), "--test-endpoints") as (_, port):
        yield Idp(port, key_file)


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


# --- Envoy ------------------------------------------------------------------------------------------

def free_ports(count):
    """Distinct loopback ports free right now, for listeners whose port a config must name."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def static_cluster(name, port):
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def wasm_filter(plugin_config, wasm_path, *, name="jwt-authz", vm_id="jwt-authz"):
    """The Wasm HTTP filter running wasm_path; plugins with the same vm_id and code share one VM."""
    configuration = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "fail_open": False,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration,
                },
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm_path)}},
                },
            },
        },
    }


def bootstrap(http_filters, clusters, normalize_path, listeners=None, use_remote_address=False,
              xff_num_trusted_hops=0, merge_slashes=False, runtime=None, stats_config=None):
    """Envoy v3 bootstrap: admin on a free loopback port, listeners (name -> port, 0 for any free
    one; default one "ingress") sharing one connection manager, everything routed to backend."""
    any_port = {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "normalize_path": normalize_path,
        "merge_slashes": merge_slashes,
        "use_remote_address": use_remote_address,
        "xff_num_trusted_hops": xff_num_trusted_hops,
        "route_config": {
            "name": "local",
            "virtual_hosts": [{
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
            }],
        },
        "http_filters": http_filters,
    }
    config = {
        "admin": {"address": any_port},
        "layered_runtime": {"layers": [{"name": "static", "static_layer": runtime or {}}]},
        "static_resources": {
            "listeners": [{
                "name": name,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": manager,
                }]}],
            } for name, port in (listeners or {"ingress": 0}).items()],
            "clusters": [static_cluster(name, port) for name, port in clusters.items()],
        },
    }
    if stats_config is not None:
        config["stats_config"] = stats_config
    return config


class Envoy:
    """A running (or refused) Envoy: requests to its listener, its log and stats."""

    def __init__(self, process, workdir):
        self.process = process
        self.workdir = Path(workdir)
        self.admin_port = None
        self.port = None
        self.ports = {}

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def exit_code(self):
        return self.process.poll()

    def get(self, path, headers=None, method="GET", body=None, listener="ingress"):
        """Send method path (raw, unnormalized) to a listener; returns (status, headers, body)."""
        return http_request(self.ports[listener], method, path, headers, body)

    def log_text(self):
        return "".join(
            file.read_text(errors="replace")
            for file in (self.workdir / "envoy.log", self.workdir / "envoy.out")
            if file.exists()
        )

    def log_tail(self, lines=40):
        """The last lines of the log, without the long list of built-in extensions."""
        kept = [line for line in self.log_text().splitlines() if not EXTENSION_LIST_LINE.search(line)]
        return "\n".join(kept[-lines:])

    def admin(self, path):
        return http_request(self.admin_port, "GET", path)

    def prometheus(self):
        """Admin /stats/prometheus as {(name, ((label, value), ...)): float}, labels sorted."""
        _, _, text = self.admin("/stats/prometheus")
        samples = {}
        for line in text.splitlines():
            match = PROMETHEUS_SAMPLE.match(line)
            if match:
                labels = tuple(sorted(PROMETHEUS_LABEL.findall(match.group("labels") or "")))
                samples[(match.group("name"), labels)] = float(match.group("value"))
        return samples

    def stats(self):
        """Admin /stats as {name: int or str}."""
        _, _, text = self.admin("/stats")
        stats = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            stats[name] = int(value) if value.isdigit() else value
        return stats

    def __repr__(self):
        return f"Envoy(port={self.port}, exit_code={self.exit_code}, workdir={self.workdir})"

    def poll_ready(self):
        """True once admin answers LIVE; then learns the listener port."""
        address_file = self.workdir / "admin.address"
        if not address_file.exists() or not address_file.read_text().strip():
            return False
        self.admin_port = int(address_file.read_text().strip().rsplit(":", 1)[1])
        try:
            status, _, text = self.admin("/ready")
        except OSError:
            return False
        if status != 200 or text.strip() != "LIVE":
            return False
        _, _, listeners = self.admin("/listeners?format=json")
        for listener in json.loads(listeners).get("listener_statuses", []):
            self.ports[listener["name"]] = listener["local_address"]["socket_address"]["port_value"]
        self.port = self.ports.get("ingress")
        return True


@contextmanager
def start_envoy(plugin_config, *, backend, idp=None, concurrency=1, clusters=None,
                normalize_path=True, expect_failure=False, wasm=True, wasm_path=None,
                filters=None, listeners=None, use_remote_address=False, xff_num_trusted_hops=0,
                merge_slashes=False, runtime=None, stats_config=None):
    """Run Envoy with the jwt-authz filter (unless wasm=False) in front of backend.

    Clusters: backend, idp (when idp is given) and any extra name -> port. stats_config is the
    bootstrap's (tag extraction, matchers). With expect_failure
    the Envoy is yielded even when it exits or never gets ready, so the test can inspect it.
    filters: HTTP filters to run (before the router) instead of jwt-authz, e.g. Envoy's native
    jwt_authn and rbac. listeners: name -> port ("ingress" must be one). The connection manager
    settings (use_remote_address, xff_num_trusted_hops, merge_slashes) are Envoy's; runtime is a
    static runtime layer (feature flags).
    """
    workdir = Path(tempfile.mkdtemp(prefix="envoy-", dir=WORK_ROOT))
    wasm_path = Path(wasm_path or WASM_PATH)
    if wasm and filters is None and not wasm_path.exists():
        raise FileNotFoundError(f"{wasm_path} is missing: build the filter first")
    all_clusters = {"backend": backend.port}
    if idp is not None:
        all_clusters["idp"] = idp.port
    all_clusters.update(clusters or {})
    if filters is None:
        filters = [wasm_filter(plugin_config, wasm_path)] if wasm else []
    filters = list(filters)
    filters.append({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    })
    config_file = workdir / "envoy.json"
    config = bootstrap(filters, all_clusters, normalize_path, listeners, use_remote_address,
                       xff_num_trusted_hops, merge_slashes, runtime, stats_config)
    config_file.write_text(json.dumps(config, indent=2))
    command = [
        str(ENVOY_BIN), "-c", str(config_file),
        "--concurrency", str(concurrency),
        "--disable-hot-restart",
        "--admin-address-path", str(workdir / "admin.address"),
        "-l", "info", "--component-log-level", "wasm:debug",
        "--log-path", str(workdir / "envoy.log"),
        "--file-flush-interval-msec", "50",
    ]
    with open(workdir / "envoy.out", "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=workdir)
    envoy = Envoy(process, workdir)
    RUNNING_ENVOYS.append(envoy)
    try:
        wait_until_ready(envoy, expect_failure)
        yield envoy
    finally:
        RUNNING_ENVOYS.remove(envoy)
        stop_process(process)
        if WORK_ROOT is None:
            shutil.rmtree(workdir, ignore_errors=True)


def wait_until_ready(envoy, expect_failure):
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not envoy.poll_ready():
        if envoy.exit_code is not None:
            if expect_failure:
                return
            raise RuntimeError(f"Envoy exited with {envoy.exit_code}:\n{envoy.log_tail()}")
        if time.monotonic() > deadline:
            if expect_failure:
                return
            raise RuntimeError(f"Envoy not ready after {STARTUP_TIMEOUT}s:\n{envoy.log_tail()}")
        time.sleep(0.05)


# --- Hand-made Proxy-Wasm modules (failure and cost baselines) ------------------------------------

def wasm_module(types, functions, exports, bodies):
    """A minimal Wasm binary: type, function, memory (1 page), export and code sections."""
    def leb(n):
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def vector(items):
        return leb(len(items)) + b"".join(items)

    def section(section_id, payload):
        return bytes([section_id]) + leb(len(payload)) + payload

    i32 = b"\x7f"
    type_entries = [b"\x60" + vector([i32] * params) + vector([i32] * results) for params, results in types]
    export_entries = [leb(len(name)) + name.encode() + bytes([kind]) + leb(index) for name, kind, index in exports]
    code_entries = [leb(len(body) + 1) + b"\x00" + body for body in bodies]
    return (b"\0asm\x01\0\0\0" + section(1, vector(type_entries)) + section(3, vector([leb(t) for t in functions]))
            + section(5, b"\x01\x00\x01") + section(7, vector(export_entries)) + section(10, vector(code_entries)))


def proxy_wasm_module(on_request_headers):
    """A Proxy-Wasm filter that starts and configures fine and runs on_request_headers (a function
    body) on every request."""
    nop, const_1, const_1024 = b"\x0b", b"\x41\x01\x0b", b"\x41\x80\x08\x0b"
    types = [(0, 0), (1, 1), (2, 0), (2, 1), (3, 1), (1, 0)]
    functions = [0, 1, 2, 3, 3, 4, 1, 5]
    names = ["proxy_abi_version_0_2_1", "proxy_on_memory_allocate", "proxy_on_context_create", "proxy_on_vm_start",
             "proxy_on_configure", "proxy_on_request_headers", "proxy_on_done", "proxy_on_delete"]
    bodies = [nop, const_1024, nop, const_1, const_1, on_request_headers, const_1, nop]
    exports = [(name, 0, index) for index, name in enumerate(names)] + [("memory", 2, 0)]
    return wasm_module(types, functions, exports, bodies)


def noop_module():
    """A Proxy-Wasm filter that lets every request through untouched (returns Continue): what running
    any Wasm filter costs in Envoy before it does any work."""
    return proxy_wasm_module(b"\x41\x00\x0b")


def trapping_module():
    """A Proxy-Wasm filter that starts and configures fine, then traps (`unreachable`) on every request:
    what a panic inside a filter amounts to at run time."""
    return proxy_wasm_module(b"\x00\x0b")  # unreachable
