"""`make run`: Envoy with jwt-authz, the local identity provider and the demo backend, on fixed ports.

`make run CONFIG=my-plugin-config.json` (python tools/run_local.py my-plugin-config.json) runs your
plugin configuration instead of examples/envoy/plugin-config.json, e.g. what `jwt-authz convert`
printed; a configuration the filter refuses is reported with every error and its field path."""
import json
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
EXAMPLE = ROOT / "examples" / "envoy"
IDP = "http://127.0.0.1:8180/realms/shop"
ENVOY_URL = "http://127.0.0.1:8080"
ADMIN_URL = "http://127.0.0.1:9901"


def wait_for(url, what, timeout=20.0, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (process is None or process.poll() is None):
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    sys.exit(f"{what} did not become ready at {url}; see the logs in {RUN_DIR}")


def token(username, client_id="shop-web"):
    form = urllib.parse.urlencode({"grant_type": "password", "client_id": client_id,
                                   "username": username, "password": username}).encode()
    with urllib.request.urlopen(f"{IDP}/protocol/openid-connect/token", form, timeout=5) as response:
        return json.load(response)["access_token"]


def try_it(idp, envoy_url, admin_url):
    """The shell lines `make run` prints to try it by hand (tests/envoy/test_examples.py runs them).
    Every `curl -i` ends with `# <status>: why`, the status it answers."""
    get_token = "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')"
    return f"""\
  TOKEN=$(curl -s -d grant_type=password -d client_id=shop-web -d username=alice -d password=alice \\
      {idp}/protocol/openid-connect/token {get_token}
  curl -i {envoy_url}/healthz                                                # 200: no token needed
  curl -i {envoy_url}/api/admin/users                                        # 401: who are you?
  curl -i -H "Authorization: Bearer $TOKEN" {envoy_url}/api/admin/users      # 200: alice has the admin role
  curl -i -H "Authorization: Bearer $TOKEN" {envoy_url}/debug/vars           # 403: DENY policy
  BOB=$(curl -s -d grant_type=password -d client_id=shop-web -d username=bob -d password=bob \\
      {idp}/protocol/openid-connect/token {get_token}
  curl -i -H "Authorization: Bearer $BOB" {envoy_url}/api/admin/users        # 403: bob is not an admin
  curl -i "{envoy_url}/api/public/items?access_token=$BOB"                   # 200: token from the query
  MOBILE=$(curl -s -d grant_type=password -d client_id=shop-mobile -d username=alice -d password=alice \\
      {idp}/protocol/openid-connect/token {get_token}
  curl -i -H "Authorization: Bearer $MOBILE" {envoy_url}/api/admin/users     # 200: alice again, ES256-signed
  OPAQUE=$(curl -s -d grant_type=password -d client_id=shop-opaque -d username=alice -d password=alice \\
      {idp}/protocol/openid-connect/token {get_token}
  curl -i -H "Authorization: Bearer $OPAQUE" {envoy_url}/api/admin/users     # 200: an opaque token, introspected
  curl -i -H "Authorization: Bearer not-a-real-token" {envoy_url}/api/public/x  # 401: introspection says inactive
  curl -s {admin_url}/stats/prometheus | grep jwt_authz              # the filter's counters"""


def status(path, bearer=None):
    request = urllib.request.Request(ENVOY_URL + path)
    if bearer:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


CONFIG_MARKER = "value: |"


def with_plugin_config(envoy_yaml, plugin_config):
    """examples/envoy/envoy.yaml with `plugin_config` (a JSON document) as the filter's configuration:
    the one line after the StringValue's `value: |`."""
    lines = envoy_yaml.splitlines(keepends=True)
    [index] = [i for i, line in enumerate(lines) if line.strip() == CONFIG_MARKER]
    indent = lines[index + 1][:len(lines[index + 1]) - len(lines[index + 1].lstrip())]
    lines[index + 1] = indent + json.dumps(plugin_config) + "\n"
    return "".join(lines)


def configuration_errors():
    """Envoy's log lines where the filter refused its configuration (one per error)."""
    log = RUN_DIR / "envoy.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return [line.split("wasm log ", 1)[-1] for line in text.splitlines() if "invalid jwt-authz configuration" in line]


def main():
    RUN_DIR.mkdir(exist_ok=True)
    custom = len(sys.argv) > 1 and sys.argv[1] != ""
    config_path = pathlib.Path(sys.argv[1]).resolve() if custom else EXAMPLE / "plugin-config.json"
    try:
        plugin_config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        sys.exit(f"CONFIG={config_path}: {error}")
    envoy_config = with_plugin_config((EXAMPLE / "envoy.yaml").read_text(), plugin_config)
    (RUN_DIR / "envoy.yaml").write_text(envoy_config)
    (RUN_DIR / "envoy.log").unlink(missing_ok=True)
    python = sys.executable
    processes = [
        subprocess.Popen([python, "tools/devidp.py", "--port", "8180", "--key-file", str(RUN_DIR / "idp-key.pem")],
                         cwd=ROOT, stderr=open(RUN_DIR / "idp.log", "w")),
        subprocess.Popen([python, "tools/backend.py", "--port", "8081"], cwd=ROOT,
                         stderr=open(RUN_DIR / "backend.log", "w")),
        subprocess.Popen([str(ROOT / ".venv" / "bin" / "envoy"), "-c", str(RUN_DIR / "envoy.yaml"),
                          "--concurrency", "2", "--disable-hot-restart", "-l", "info",
                          "--log-path", str(RUN_DIR / "envoy.log")], cwd=ROOT),
    ]

    def stop(*_):
        stop_all(processes)
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    wait_for(f"{IDP}/.well-known/openid-configuration", "identity provider")
    try:
        wait_for(f"{ADMIN_URL}/ready", "Envoy", process=processes[2])
    except SystemExit:
        errors = configuration_errors()
        if errors:
            print(f"jwt-authz refused {config_path}:", *errors, sep="\n  ", file=sys.stderr)
        stop_all(processes)
        raise
    if custom:
        print(f"\njwt-authz is running with {config_path}: Envoy on :8080 (admin :9901), identity provider on "
              f":8180 (realm shop, issuer {IDP}), backend on :8081")
        print(f"Logs: {RUN_DIR}/envoy.log, idp.log, backend.log. Your configuration's jwtRules must point at the "
              f"local identity provider (jwksCluster \"keycloak\") for its tokens to verify.\n")
        print(f"Try it yourself:\n\n{try_it(IDP, ENVOY_URL, ADMIN_URL)}\n\nCtrl-C stops everything.")
        watch(processes)

    alice, bob = token("alice"), token("bob")
    # The same user through shop-mobile, whose access tokens the realm signs with ES256.
    alice_es256 = token("alice", client_id="shop-mobile")
    checks = [("GET /healthz, no token", status("/healthz"), 200),
              ("GET /api/admin/users, no token", status("/api/admin/users"), 401),
              ("GET /api/admin/users, alice (admin)", status("/api/admin/users", alice), 200),
              ("GET /api/admin/users, bob (no admin role)", status("/api/admin/users", bob), 403),
              ("GET /api/public/items, bob", status("/api/public/items", bob), 200),
              ("GET /api/admin/users, alice via shop-mobile (ES256)", status("/api/admin/users", alice_es256), 200),
              ("GET /api/public/items, tampered token", status("/api/public/items", alice[:-4] + "AAAA"), 401)]
    print("\njwt-authz is running: Envoy on :8080 (admin :9901), identity provider on :8180, backend on :8081")
    print(f"Logs: {RUN_DIR}/envoy.log, idp.log, backend.log\n")
    for label, got, want in checks:
        print(f"  {'ok ' if got == want else 'BAD'} {got}  {label}")
    print(f"""
Try it yourself:

{try_it(IDP, ENVOY_URL, ADMIN_URL)}

Ctrl-C stops everything.""")
    if any(got != want for _, got, want in checks):
        print("\nSome checks did not give the expected status: see the logs above.", file=sys.stderr)
    watch(processes)


def stop_all(processes):
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=10)


def watch(processes):
    """Until Ctrl-C, or until one of them exits (then all stop)."""
    while True:
        for process in processes:
            if process.poll() is not None:
                print(f"{process.args[0]} exited with {process.returncode}; stopping", file=sys.stderr)
                stop_all(processes)
                sys.exit(1)
        time.sleep(1)


if __name__ == "__main__":
    main()
