"""The deployment examples: wasm-plugin.yaml, examples/istio and examples/keycloak.

No Kubernetes runs here, so the manifests are checked for what can be checked (they parse, refer to
each other consistently, and `jwt-authz check` accepts every WasmPlugin), and the walkthrough's
pluginConfig runs in real Envoy against the Keycloak realm export served by tools/devidp.py.
"""

import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from testbed.envoy import start_envoy
from testbed.expect import bearer
from testbed.paths import REPO_ROOT
from testbed.services import Idp, run_tool, user_id
from testbed.tokens import b64url_decode

WASM_PLUGIN = REPO_ROOT / "wasm-plugin.yaml"
ISTIO = REPO_ROOT / "examples" / "istio"
REALM_EXPORT = REPO_ROOT / "examples" / "keycloak" / "shop-realm.json"
CLI = Path(os.environ.get("JWT_AUTHZ_CLI", REPO_ROOT / "dist" / "jwt-authz"))
KEYCLOAK_URL = "http://keycloak.keycloak.svc.cluster.local:8080"
ROLES_PATH = re.compile(r"^request\.auth\.claims\[realm_access\]\[roles\]$")
CLIENT_ROLES_PATH = re.compile(r"^request\.auth\.claims\[resource_access\]\[([^\]]+)\]\[roles\]$")


def documents(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def all_manifests():
    return {path.name: documents(path) for path in [WASM_PLUGIN, *sorted(ISTIO.glob("*.yaml"))]}


def wasm_plugin():
    [plugin] = documents(WASM_PLUGIN)
    return plugin


def realm_export():
    return json.loads(REALM_EXPORT.read_text())


# --- Manifests ------------------------------------------------------------------------------------------

def test_every_manifest_parses_as_kubernetes_objects():
    manifests = all_manifests()
    assert {"wasm-plugin.yaml", "backend.yaml", "keycloak.yaml", "istio-native.yaml",
            "external-keycloak.yaml"} <= manifests.keys()
    for name, docs in manifests.items():
        assert docs, name
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), (name, doc)
            assert doc["metadata"].get("name"), (name, doc)


@pytest.mark.parametrize("name", ["wasm-plugin.yaml", "external-keycloak.yaml"])
def test_jwt_authz_check_accepts_every_wasm_plugin(name):
    assert CLI.exists(), f"{CLI} is missing: run `make cli`"
    path = WASM_PLUGIN if name == "wasm-plugin.yaml" else ISTIO / name
    result = subprocess.run([str(CLI), "check", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    plugins = [doc for doc in documents(path) if doc["kind"] == "WasmPlugin"]
    assert result.stdout.count(": ok") == len(plugins) == 1, result.stdout


def test_the_wasm_plugin_is_deployed_as_the_issue_asks():
    plugin = wasm_plugin()
    spec = plugin["spec"]
    assert plugin["apiVersion"] == "extensions.istio.io/v1alpha1"
    assert spec["url"].startswith("oci://")
    # No sha256 placeholder (check refuses an all-zero one): the digest `make push` prints goes there.
    assert "sha256" not in spec and "make push" in WASM_PLUGIN.read_text()
    assert (spec["phase"], spec["failStrategy"], spec["imagePullPolicy"]) == ("AUTHN", "FAIL_CLOSE", "IfNotPresent")
    # The selector picks both versions of the backend, and nothing else the walkthrough deploys.
    selected = spec["selector"]["matchLabels"]
    deployments = [doc for doc in documents(ISTIO / "backend.yaml") if doc["kind"] == "Deployment"]
    chosen = [d["metadata"]["name"] for d in deployments
              if selected.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
    assert chosen == ["backend-v1", "backend-v2"]
    assert plugin["metadata"]["namespace"] == deployments[0]["metadata"]["namespace"]


def test_the_jwks_cluster_exists_in_the_mesh():
    """The default cluster outbound|<port>||<host> of the jwksUri is the Keycloak Service's."""
    [rule] = wasm_plugin()["spec"]["pluginConfig"]["jwtRules"]
    assert "jwksCluster" not in rule
    host, port = re.match(r"^http://([^:/]+):(\d+)/", rule["jwksUri"]).groups()
    [service] = [doc for doc in documents(ISTIO / "keycloak.yaml") if doc["kind"] == "Service"]
    assert host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    [service_port] = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    assert service_port["name"].startswith("http"), "Istio must see HTTP on the JWKS port"
    [deployment] = [doc for doc in documents(ISTIO / "keycloak.yaml") if doc["kind"] == "Deployment"]
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert rule["issuer"].startswith(env["KC_HOSTNAME"] + "/realms/"), "tokens must carry the issuer trusted"


def test_the_external_idp_cluster_originates_tls():
    docs = {doc["kind"]: doc for doc in documents(ISTIO / "external-keycloak.yaml")}
    [rule] = docs["WasmPlugin"]["spec"]["pluginConfig"]["jwtRules"]
    direction, port, subset, host = rule["jwksCluster"].split("|")
    assert (direction, subset) == ("outbound", "")
    assert rule["jwksUri"].startswith(f"https://{host}/")
    entry = docs["ServiceEntry"]["spec"]
    assert host in entry["hosts"]
    [entry_port] = [p for p in entry["ports"] if p["number"] == int(port)]
    assert (entry_port["protocol"], entry_port["targetPort"]) == ("HTTP", 443)
    rule_spec = docs["DestinationRule"]["spec"]
    assert rule_spec["host"] == host
    [tls] = [s["tls"] for s in rule_spec["trafficPolicy"]["portLevelSettings"] if s["port"]["number"] == int(port)]
    assert (tls["mode"], tls["sni"]) == ("SIMPLE", host)


# --- Keycloak realm export ---------------------------------------------------------------------------------

def test_realm_export_has_the_shapes_keycloak_imports():
    realm = realm_export()
    assert realm["realm"] == "shop" and realm["enabled"] is True
    # Without clientScopes, Keycloak's import creates its default scopes (profile, roles, ...),
    # which put preferred_username and realm_access.roles into the tokens.
    assert "clientScopes" not in realm
    realm_roles = {role["name"] for role in realm["roles"]["realm"]}
    client_roles = {client: {role["name"] for role in roles} for client, roles in realm["roles"]["client"].items()}
    clients = {client["clientId"]: client for client in realm["clients"]}
    assert set(client_roles) <= set(clients)
    public = [c for c in clients.values() if c["publicClient"]]
    confidential = [c for c in clients.values() if not c["publicClient"]]
    assert public and confidential
    assert all(c["clientAuthenticatorType"] == "client-secret" and c["secret"] for c in confidential)
    builtin = {"default-roles-shop", "offline_access", "uma_authorization"}
    for user in realm["users"]:
        assert set(user.get("realmRoles", [])) <= realm_roles | builtin, user["username"]
        for client, roles in user.get("clientRoles", {}).items():
            assert set(roles) <= client_roles[client], user["username"]
        if "serviceAccountClientId" in user:
            assert user["username"] == f"service-account-{user['serviceAccountClientId']}"
            assert clients[user["serviceAccountClientId"]]["serviceAccountsEnabled"] is True
        else:
            [credential] = user["credentials"]
            assert credential["type"] == "password" and credential["temporary"] is False
        # Fixed ids: principals (iss/sub) in policies are the same in Keycloak and in tools/devidp.py.
        assert user["id"] == user_id("shop", user["username"])
    assert any("serviceAccountClientId" in user for user in realm["users"])


def test_realm_export_has_a_key_for_every_algorithm_a_client_signs_with():
    import devidp
    realm = realm_export()
    providers = realm["components"]["org.keycloak.keys.KeyProvider"]
    # An export with any key provider gets none of Keycloak's default providers at import, so it
    # must name them itself: without hmac-generated HS512 Keycloak has no key for its own refresh
    # tokens, without rsa-enc-generated none for encryption.
    named = {(p["providerId"], p["config"].get("algorithm", [None])[0]) for p in providers}
    assert {("rsa-enc-generated", "RSA-OAEP"), ("hmac-generated", "HS512"), ("aes-generated", None)} <= named
    assert len({p["name"] for p in providers}) == len(providers), "Keycloak names each provider once"
    served = devidp.key_provider_algorithms(realm)
    assert served == ["RS256", "PS256", "ES256", "EdDSA"]
    chosen = {client["clientId"]: client.get("attributes", {}).get("access.token.signed.response.alg")
              for client in realm["clients"]}
    assert chosen["shop-mobile"] == "ES256"
    assert realm["defaultSignatureAlgorithm"] in served
    assert {alg for alg in chosen.values() if alg} <= set(served)


def test_realm_export_is_the_realm_of_make_run():
    """tools/devidp.py reads the export into the same realm it serves by default."""
    import devidp
    converted = devidp.realm_from_keycloak_export(realm_export())

    def normalized(realm):
        users = {name: {**user, "clientRoles": user.get("clientRoles", {})} for name, user in realm["users"].items()}
        clients = {name: {"publicClient": False, **client} for name, client in realm["clients"].items()}
        return realm["realm"], realm["signatureAlgorithms"], realm["defaultSignatureAlgorithm"], users, clients

    assert normalized(converted) == normalized(devidp.DEFAULT_REALM)


def test_the_policies_name_roles_and_audiences_the_realm_has():
    realm = realm_export()
    config = wasm_plugin()["spec"]["pluginConfig"]
    realm_roles = {role["name"] for role in realm["roles"]["realm"]}
    client_roles = {client: {role["name"] for role in roles} for client, roles in realm["roles"]["client"].items()}
    used = 0
    for policy in config["policies"]:
        for rule in policy.get("rules", []):
            for condition in rule.get("when", []):
                if ROLES_PATH.match(condition["key"]):
                    assert set(condition["values"]) <= realm_roles
                    used += 1
                elif match := CLIENT_ROLES_PATH.match(condition["key"]):
                    assert set(condition["values"]) <= client_roles[match.group(1)]
                    used += 1
    assert used == 2
    audiences = {mapper["config"]["included.custom.audience"] for client in realm["clients"]
                 for mapper in client.get("protocolMappers", []) if mapper["protocolMapper"] == "oidc-audience-mapper"}
    assert audiences == set(config["jwtRules"][0]["audiences"])
    testuser = next(user for user in realm["users"] if user["username"] == "testuser")
    assert "backendaccess" in testuser["realmRoles"]


# --- The walkthrough, in Envoy -------------------------------------------------------------------------------

@contextmanager
def keycloak_stand_in(workdir):
    """tools/devidp.py serving the realm export (Keycloak's token endpoint shapes)."""
    key_file = Path(workdir) / "key.pem"
    with run_tool("devidp.py", workdir, "--realm-file", str(REALM_EXPORT), "--key-file", str(key_file)) as (_, port):
        yield Idp(port, key_file)


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory, backend):
    with keycloak_stand_in(tmp_path_factory.mktemp("keycloak")) as keycloak:
        # The WasmPlugin's pluginConfig with Keycloak's in-cluster URL pointed at the stand-in; the
        # JWKS cluster is still the name derived from jwksUri, as a ServiceEntry or Service makes it.
        local = f"http://127.0.0.1:{keycloak.port}"
        config = json.loads(json.dumps(wasm_plugin()["spec"]["pluginConfig"]).replace(KEYCLOAK_URL, local))
        clusters = {f"outbound|{keycloak.port}||127.0.0.1": keycloak.port}
        with start_envoy(config, backend=backend, clusters=clusters) as envoy:
            yield envoy, keycloak


def test_walkthrough_curl_lines(walkthrough):
    envoy, keycloak = walkthrough
    testuser = keycloak.password_token("testuser", "testuser", client_id="shop-web")
    bob = keycloak.password_token("bob", "bob", client_id="shop-web")
    alice = keycloak.password_token("alice", "alice", client_id="shop-web")
    service = keycloak.client_credentials_token("shop-backend", "shop-backend-secret")
    mobile = keycloak.password_token("testuser", "testuser", client_id="shop-mobile")
    assert json.loads(b64url_decode(mobile.split(".")[0]))["alg"] == "ES256"
    expectations = [
        ("GET", "/healthz", None, 200),
        ("GET", "/api/items", None, 401),
        ("GET", "/api/items", testuser, 200),
        ("POST", "/api/items", testuser, 200),
        ("GET", "/api/items", mobile, 200),
        ("GET", "/api/items", mobile[:-6] + "AAAAAA", 401),
        ("GET", "/api/items", bob, 403),
        ("GET", "/api/items", alice, 403),
        ("GET", "/api/items", service, 200),
        ("POST", "/api/items", service, 403),
        ("GET", "/internal/metrics", testuser, 403),
        ("GET", "/api/items", testuser[:-6] + "AAAAAA", 401),
    ]
    for method, path, token, status in expectations:
        got, headers, body = envoy.get(path, bearer(token) if token else None, method=method)
        assert got == status, (method, path, status, got, body)
        if status == 401:
            assert headers["www-authenticate"].startswith("Bearer realm=")
    _, _, body = envoy.get("/api/items", bearer(testuser))
    forwarded = {name.lower(): value for name, value in json.loads(body)["headers"].items()}
    assert forwarded["x-user"] == "testuser" and "authorization" not in forwarded


def test_walkthrough_readme_uses_every_example_and_shows_each_outcome():
    readme = (ISTIO / "README.md").read_text()
    for example in ["backend.yaml", "keycloak.yaml", "external-keycloak.yaml", "istio-native.yaml",
                    "shop-realm.json", "wasm-plugin.yaml"]:
        assert example in readme, example
    curl_outcomes = re.findall(r"^(?:call|curl) .*# (\d{3})", readme, re.M)
    assert {"200", "401", "403"} <= set(curl_outcomes), curl_outcomes


# --- make run's curl lines ---------------------------------------------------------------------------

CURL_STATUS = re.compile(r"^\s*curl -i .*# (\d{3}):", re.M)


def test_the_curl_lines_make_run_prints_answer_as_their_comments_say(idp, backend, tmp_path):
    """tools/run_local.py's "Try it yourself" lines, run by bash as printed, against the example
    plugin configuration and the dev IdP's default realm (the one `make run` serves)."""
    import run_local
    plugin_config = json.loads((REPO_ROOT / "examples" / "envoy" / "plugin-config.json").read_text())
    local = f"http://127.0.0.1:{idp.port}"
    config = json.loads(json.dumps(plugin_config).replace("http://127.0.0.1:8180", local))
    assert config != plugin_config, "the example no longer names make run's IdP address"
    with start_envoy(config, backend=backend, clusters={"keycloak": idp.port}) as envoy:
        lines = run_local.try_it(idp.issuer, f"http://127.0.0.1:{envoy.port}", f"http://127.0.0.1:{envoy.admin_port}")
        expected = CURL_STATUS.findall(lines)
        # Every `curl -i` says what it answers, and the lines show all three outcomes.
        assert len(expected) == lines.count("curl -i ") and {"200", "401", "403"} <= set(expected), lines
        script = tmp_path / "try-it.sh"
        script.write_text("set -euo pipefail\n" + lines + "\n")
        result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # A status line follows the previous answer's body, which need not end in a newline.
    answered = re.findall(r"HTTP/1\.1 (\d{3}) ", result.stdout)
    assert answered == expected, result.stdout[-3000:]
    assert re.search(r"^jwt_authz_allowed_total\S* [1-9]", result.stdout, re.M), "the counters line shows none"


# --- the ready-to-run Envoy configuration and make run CONFIG= ----------------------------------------

MAKE_RUN_PORTS = (8080, 8081, 8180, 9901)


def ports_free():
    import socket
    for port in MAKE_RUN_PORTS:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return False
    return True


def test_the_envoy_example_embeds_the_example_plugin_configuration():
    envoy_yaml = (REPO_ROOT / "examples" / "envoy" / "envoy.yaml").read_text()
    [wasm] = [f for f in yaml.safe_load(envoy_yaml)["static_resources"]["listeners"][0]["filter_chains"][0]
              ["filters"][0]["typed_config"]["http_filters"] if f["name"] == "envoy.filters.http.wasm"]
    embedded = json.loads(wasm["typed_config"]["config"]["configuration"]["value"])
    assert embedded == json.loads((REPO_ROOT / "examples" / "envoy" / "plugin-config.json").read_text())


@contextmanager
def running(*commands):
    processes = [subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for command in commands]
    try:
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


def http_status(url, token=None):
    import urllib.error
    import urllib.request
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def wait_until(condition, timeout=20.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def test_envoy_starts_with_the_example_configuration_as_it_is(tmp_path):
    """`envoy -c examples/envoy/envoy.yaml` (or func-e run) from the repository root: no template,
    no placeholder; with the dev IdP and the backend on the ports it names, it enforces."""
    if not ports_free():
        pytest.skip(f"ports {MAKE_RUN_PORTS} are in use (make run?)")
    import run_local
    envoy = [str(REPO_ROOT / ".venv" / "bin" / "envoy"), "-c", "examples/envoy/envoy.yaml", "--disable-hot-restart",
             "--concurrency", "1", "--log-path", str(tmp_path / "envoy.log")]
    idp = [sys.executable, "tools/devidp.py", "--port", "8180", "--key-file", str(tmp_path / "key.pem")]
    backend = [sys.executable, "tools/backend.py", "--port", "8081"]
    with running(idp, backend, envoy) as processes:
        assert wait_until(lambda: http_status("http://127.0.0.1:9901/ready") == 200), processes[2].poll()
        assert wait_until(lambda: http_status(run_local.IDP + "/.well-known/openid-configuration") == 200)
        alice, bob = run_local.token("alice"), run_local.token("bob")
        assert http_status("http://127.0.0.1:8080/healthz") == 200
        assert http_status("http://127.0.0.1:8080/api/admin/users") == 401
        assert http_status("http://127.0.0.1:8080/api/admin/users", alice) == 200
        assert http_status("http://127.0.0.1:8080/api/admin/users", bob) == 403


def test_make_run_config_runs_a_users_configuration_and_reports_a_refused_one(tmp_path):
    if not ports_free():
        pytest.skip(f"ports {MAKE_RUN_PORTS} are in use (make run?)")
    import run_local
    # A configuration of one's own, e.g. what `jwt-authz convert` printed.
    own = {"jwtRules": [{"issuer": run_local.IDP, "audiences": ["shop"], "jwksCluster": "keycloak",
                         "jwksUri": run_local.IDP + "/protocol/openid-connect/certs"}],
           "policies": [{"name": "only-bob", "rules": [{"when": [
               {"key": "request.auth.claims[preferred_username]", "values": ["bob"]}]}]}]}
    config = tmp_path / "mine.json"
    config.write_text(json.dumps(own))
    with running(["make", "--no-print-directory", "run", f"CONFIG={config}"]) as [run]:
        # (make builds first if the filter is out of date.)
        assert wait_until(lambda: http_status("http://127.0.0.1:9901/ready") == 200, timeout=120)
        assert wait_until(lambda: http_status(run_local.IDP + "/.well-known/openid-configuration") == 200)
        assert http_status("http://127.0.0.1:8080/anything", run_local.token("bob")) == 200
        assert http_status("http://127.0.0.1:8080/anything", run_local.token("alice")) == 403
        assert json.dumps(own) in (REPO_ROOT / ".run" / "envoy.yaml").read_text()
    assert wait_until(ports_free)
    # One the filter refuses: every error with its field path, and make run stops.
    config.write_text(json.dumps({"jwtRules": [{"issuer": "", "jwksUri": "ftp://x"}],
                                  "policies": [{"action": "MAYBE"}]}))
    result = subprocess.run(["make", "--no-print-directory", "run", f"CONFIG={config}"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "jwt-authz refused" in result.stderr, result.stderr[-2000:]
    assert "jwtRules[0].issuer: must not be empty" in result.stderr, result.stderr[-2000:]
    assert "policies[0].action" in result.stderr, result.stderr[-2000:]
