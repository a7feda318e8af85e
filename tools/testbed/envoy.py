"""Envoy for the tests and tools: v3 bootstraps (listeners, clusters, the Wasm filter) and a
running Envoy process with its listeners, admin endpoint, log and stats."""

import json
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .net import http_request
from .paths import ENVOY_BIN, WASM_PATH
from .services import STARTUP_TIMEOUT, stop_process

EXTENSION_LIST_LINE = re.compile(r"\]\s{3}[a-z_.]+: |statically linked extensions")
PROMETHEUS_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
PROMETHEUS_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

# Envoys currently running, so conftest can attach their log tails to failing tests.
RUNNING_ENVOYS = []
# Where Envoy work directories go; conftest points it at pytest's tmp dir (kept for inspection).
# None: a fresh temporary directory per Envoy, removed when it stops.
WORK_ROOT = None


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


def wasm_filter(plugin_config, wasm_path, *, name="jwt-authz", vm_id="jwt-authz", env=None):
    """The Wasm HTTP filter running wasm_path; plugins with the same vm_id and code share one VM.
    env: the VM's environment variables (vm_config.environment_variables.key_values)."""
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
                    **({"environment_variables": {"key_values": env}} if env else {}),
                },
            },
        },
    }


def bootstrap(http_filters, clusters, normalize_path, listeners=None, use_remote_address=False,
              xff_num_trusted_hops=0, merge_slashes=False, runtime=None, stats_config=None, listener_tls=None,
              access_log_path=None):
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
        # As Istio's default access log reads them: the status and its details.
        "access_log": [] if access_log_path is None else [{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(access_log_path),
                "log_format": {"text_format_source": {
                    "inline_string": "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS%\n"}},
            },
        }],
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
                # A TLS listener reads the client's server name the way Istio's do (tls_inspector).
                **({"listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]}
                   if name in (listener_tls or {}) else {}),
                "filter_chains": [{
                    "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}],
                    **({"transport_socket": downstream_tls((listener_tls or {})[name])}
                       if name in (listener_tls or {}) else {}),
                }],
            } for name, port in (listeners or {"ingress": 0}).items()],
            "clusters": [static_cluster(name, port) for name, port in clusters.items()],
        },
    }
    if stats_config is not None:
        config["stats_config"] = stats_config
    return config


def downstream_tls(tls):
    """A listener's TLS: tls is a testbed.tls.ServerTls (certificate, key, the CA clients are
    checked against, and whether a client certificate is required)."""
    context = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": str(tls.cert)},
                                  "private_key": {"filename": str(tls.key)}}],
            "validation_context": {"trusted_ca": {"filename": str(tls.ca)}},
        },
        "require_client_certificate": tls.require_client_certificate,
    }
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


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

    def access_log(self, wait_for=1, timeout=3.0):
        """The access log's lines (`METHOD PATH STATUS DETAILS`), once it has `wait_for` of them."""
        path = self.workdir / "access.log"
        deadline = time.monotonic() + timeout
        while True:
            lines = path.read_text().splitlines() if path.exists() else []
            if len(lines) >= wait_for or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

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
                merge_slashes=False, runtime=None, stats_config=None, listener_tls=None, log_flush_ms=50):
    """Run Envoy with the jwt-authz filter (unless wasm=False) in front of backend.

    Clusters: backend, idp (when idp is given) and any extra name -> port. stats_config is the
    bootstrap's (tag extraction, matchers). With expect_failure
    the Envoy is yielded even when it exits or never gets ready, so the test can inspect it.
    filters: HTTP filters to run (before the router) instead of jwt-authz, e.g. Envoy's native
    jwt_authn and rbac. listeners: name -> port ("ingress" must be one). The connection manager
    settings (use_remote_address, xff_num_trusted_hops, merge_slashes) are Envoy's; runtime is a
    static runtime layer (feature flags). listener_tls: listener name -> testbed.tls.ServerTls.
    log_flush_ms: how often Envoy writes its log out (lower for tests that read a line per request).
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
                       xff_num_trusted_hops, merge_slashes, runtime, stats_config, listener_tls,
                       access_log_path=workdir / "access.log")
    config_file.write_text(json.dumps(config, indent=2))
    command = [
        str(ENVOY_BIN), "-c", str(config_file),
        "--concurrency", str(concurrency),
        "--disable-hot-restart",
        "--admin-address-path", str(workdir / "admin.address"),
        "-l", "info", "--component-log-level", "wasm:debug",
        "--log-path", str(workdir / "envoy.log"),
        "--file-flush-interval-msec", str(log_flush_ms),
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
