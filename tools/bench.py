"""Side-by-side benchmark: one Envoy, five listeners, the same route and policy.

  no-auth        no auth filter at all (the ceiling)
  native         jwt_authn + rbac as Istio configures them (no token cache)
  native-cached  the same with jwt_authn's jwt_cache_config
  jwt-authz      dist/plugin.wasm (signatureBackend auto: Envoy's verify_signature for RS*/ES*)
  jwt-authz-vm   the same with signatureBackend vm: every signature verified inside the VM

Each listener answers with a direct response, so only the filters differ. wrk drives each in
interleaved rounds, for a hot workload (one token, again and again) and cold workloads (a distinct
pre-minted token per request, never reused within a run): RS256 on every listener, ES256 and PS256
on native and both jwt-authz backends. And a DPoP workload on both jwt-authz listeners: the hot
token bound to a key (`cnf.jkt`), sent as `Authorization: DPoP` with a new ES256 proof per request
(minted just before each run, as proofs live 60 s), next to the same kind of token as a bearer
token: what a proof costs. Prints req/s medians, ratios and latencies, and the plugin VM's memory.
Not a test: nothing here fails on speed.

Usage: python tools/bench.py [--duration 3] [--rounds 3] [--connections 32]
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

# The test bed shared with the tests (tools/testbed, found beside this script): token minting, the
# Wasm filter's Envoy config, the hand-made no-op module and the process helpers.
from testbed.envoy import wasm_filter
from testbed.net import http_request
from testbed.paths import ENVOY_BIN, REPO_ROOT, WASM_PATH
from testbed.services import stop_process
from testbed.tokens import b64url, json_segment, keycloak_payload, sign_rs256, token_payload
from testbed.wasm import noop_module

ISSUER = "https://idp.bench.example/realms/shop"
AUDIENCE = "shop"
KID = "bench-key"
# One key id per algorithm: the RSA key is published twice, bound to RS256 and to PS256.
KIDS = {"RS256": KID, "PS256": "bench-key-ps256", "ES256": "bench-key-es256"}
PATH = "/api/admin/orders"
LISTENERS = ("no-auth", "native", "native-cached", "jwt-authz", "jwt-authz-vm")
# Not compared, only reported: jwt-authz with no jwtRules and one allow-all policy, i.e. about what
# any Proxy-Wasm filter costs in this Envoy before it does real work. Hot workload only.
FLOOR = "wasm-floor"
# Not compared either: a hand-made Proxy-Wasm module whose on_request_headers only returns Continue,
# i.e. what running any Wasm filter at all costs. Hot workload only.
NOOP = "wasm-noop"
# And two filters built with the same Proxy-Wasm SDK and profile as jwt-authz (tools/sdk-baseline):
# one that does nothing, one that only reads the request headers, as any auth filter must.
SDK_EMPTY, SDK_HEADERS = "sdk-empty", "sdk-headers"
# And jwt-authz with 100 issuers, the token's the last of them (99 realms of one Keycloak before it,
# their names sharing its long prefix): a request must cost the same as with one. Hot workload only.
MANY_ISSUERS = "jwt-authz-100"
BASELINES = (FLOOR, NOOP, MANY_ISSUERS)
HOT, COLD = "hot", "cold"
# Cold workloads besides RS256 (named cold-<alg>), on these listeners only.
OTHER_ALGS = ("ES256", "PS256")
ALG_LISTENERS = ("native", "jwt-authz", "jwt-authz-vm")
# Cold tokens per run: more than a listener that verifies every token can serve in one run.
COLD_TOKENS_PER_SECOND = 10_000
# The DPoP workload (a proof per request), on these listeners; proofs name this host in `htu`.
DPOP = "dpop"
DPOP_LISTENERS = ("jwt-authz", "jwt-authz-vm")
DPOP_HOST = "bench.example"
# Proofs per second of a run: above what the listeners serve with a proof each.
DPOP_PROOFS_PER_SECOND = 8_000

WRK_SCRIPT = r"""
-- Sends lines[first+1 .. first+limit] of a file, in order: each as "Authorization: Bearer <line>",
-- or, given a token (args[4]), as "DPoP: <line>" beside "Authorization: DPoP <token>" to Host: %s.
local requests, count, index, wrapped = {}, 0, 0, 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  local path, first, limit, token = args[1], tonumber(args[2]), tonumber(args[3]), args[4]
  local n = 0
  for line in io.lines(path) do
    n = n + 1
    if n > first then
      count = count + 1
      local headers = {["Authorization"] = "Bearer " .. line}
      if token then headers = {["Host"] = "%s", ["Authorization"] = "DPoP " .. token, ["DPoP"] = line} end
      requests[count] = wrk.format("GET", "%s", headers)
      if count >= limit then break end
    end
  end
end
function request()
  index = index + 1
  if index > count then index, wrapped = 1, wrapped + 1 end
  return requests[index]
end
function done(summary, latency, requests)
  local wraps = 0
  for _, thread in ipairs(threads) do wraps = wraps + (thread:get("wrapped") or 0) end
  local e = summary.errors
  io.write(string.format("RESULT requests=%%d duration_us=%%d socket_errors=%%d non2xx=%%d p50_us=%%d p99_us=%%d wrapped=%%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), wraps))
end
""" % (DPOP_HOST, DPOP_HOST, PATH)


# Minted tokens are kept here between runs (each run starts a fresh Envoy, so nothing is cached
# across runs) and re-minted when they would expire within a day.
TOKEN_STORE = REPO_ROOT / "target" / "bench-tokens"
TOKEN_LIFETIME = 7 * 24 * 3600


def keycloak_claims(username, jti):
    now = int(time.time())
    claims = keycloak_payload(ISSUER, username)
    claims.update({"exp": now + TOKEN_LIFETIME, "iat": now, "auth_time": now, "jti": jti,
                   "aud": [AUDIENCE, "account"]})
    return claims


def sign(alg, signing_input, keys):
    data = signing_input.encode("ascii")
    if alg == "RS256":
        return sign_rs256(signing_input, keys["rsa"])
    if alg == "PS256":
        return keys["rsa"].sign(data, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    # ES256: JOSE's raw r || s, not the DER cryptography produces.
    r, s = decode_dss_signature(keys["ec"].sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def mint(alg, keys, username, jti):
    header = {"alg": alg, "typ": "JWT", "kid": KIDS[alg]}
    signing_input = f"{json_segment(header)}.{json_segment(keycloak_claims(username, jti))}"
    return f"{signing_input}.{b64url(sign(alg, signing_input, keys))}"


def _pem(key):
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_keys(pems):
    from cryptography.hazmat.primitives import serialization
    return {name: serialization.load_pem_private_key(pem, password=None) for name, pem in pems.items()}


def _mint_batch(args):
    alg, pems, start, count = args
    keys = _load_keys(pems)
    return [mint(alg, keys, "alice", f"bench-{alg}-{start + i}") for i in range(count)]


def mint_many(alg, keys, count, workers):
    pems = {name: _pem(key) for name, key in keys.items()}
    batch = 2_000
    jobs = [(alg, pems, start, min(batch, count - start)) for start in range(0, count, batch)]
    tokens = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(_mint_batch, jobs):
            tokens.extend(part)
    return tokens


def load_or_mint(count):
    """(keys, hot token, {alg: cold tokens}), reusing stored ones while enough are valid."""
    key_files = {"rsa": TOKEN_STORE / "key.pem", "ec": TOKEN_STORE / "ec.pem"}
    hot_file = TOKEN_STORE / "hot.txt"
    cold_files = {alg: TOKEN_STORE / ("cold.txt" if alg == "RS256" else f"cold-{alg}.txt") for alg in KIDS}
    if all(f.exists() for f in [*key_files.values(), hot_file, *cold_files.values()]):
        cold = {alg: f.read_text().split() for alg, f in cold_files.items()}
        hot_token = hot_file.read_text().strip()
        if all(len(tokens) >= count for tokens in cold.values()) and token_payload(hot_token)["exp"] > time.time() + 86_400:
            keys = _load_keys({name: f.read_bytes() for name, f in key_files.items()})
            return keys, hot_token, {alg: tokens[:count] for alg, tokens in cold.items()}
    started = time.monotonic()
    print(f"minting {count} cold tokens per algorithm ({', '.join(KIDS)}; Keycloak-shaped; kept in {TOKEN_STORE}) ...",
          flush=True)
    keys = {"rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec": ec.generate_private_key(ec.SECP256R1())}
    cold = {alg: mint_many(alg, keys, count, workers=os.cpu_count() or 1) for alg in KIDS}
    hot_token = mint("RS256", keys, "alice", "bench-hot")
    TOKEN_STORE.mkdir(parents=True, exist_ok=True)
    for name, f in key_files.items():
        f.write_bytes(_pem(keys[name]))
    hot_file.write_text(hot_token + "\n")
    for alg, f in cold_files.items():
        f.write_text("\n".join(cold[alg]) + "\n")
    print(f"minted in {time.monotonic() - started:.0f}s", flush=True)
    return keys, hot_token, cold


def dpop_holder():
    """A client's P-256 key and its public JWK's RFC 7638 thumbprint."""
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_numbers()
    jwk = {"crv": "P-256", "kty": "EC", "x": b64url(point.x.to_bytes(32, "big")), "y": b64url(point.y.to_bytes(32, "big"))}
    thumbprint = b64url(hashlib.sha256(json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()).digest())
    return key, jwk, thumbprint


def dpop_token(keys, thumbprint):
    """The hot token's twin bound to the holder's key."""
    claims = {**keycloak_claims("alice", "bench-dpop"), "cnf": {"jkt": thumbprint}}
    signing_input = f"{json_segment({'alg': 'RS256', 'typ': 'JWT', 'kid': KID})}.{json_segment(claims)}"
    return f"{signing_input}.{b64url(sign('RS256', signing_input, keys))}"


def _proof_batch(args):
    pem, jwk, ath, start, count, iat, nonce = args
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key(pem, password=None)
    header = json_segment({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk})
    proofs = []
    for i in range(start, start + count):
        claims = {"jti": f"bench-{nonce}-{i}", "htm": "GET", "htu": f"http://{DPOP_HOST}{PATH}", "iat": iat, "ath": ath}
        signing_input = f"{header}.{json_segment(claims)}"
        r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        proofs.append(f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}")
    return proofs


def mint_proofs(holder, token, count):
    """count proofs of token by holder, each with its own jti, all issued now."""
    key, jwk, _ = holder
    ath = b64url(hashlib.sha256(token.encode()).digest())
    iat, batch, nonce = int(time.time()), 2_000, os.urandom(8).hex()
    jobs = [(_pem(key), jwk, ath, start, min(batch, count - start), iat, nonce) for start in range(0, count, batch)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return [proof for part in pool.map(_proof_batch, jobs) for proof in part]


def jwks_of(keys):
    numbers = keys["rsa"].public_key().public_numbers()
    point = keys["ec"].public_key().public_numbers()
    def b64_int(value, size=None):
        return b64url(value.to_bytes(size or (value.bit_length() + 7) // 8, "big"))
    rsa_jwk = {"kty": "RSA", "use": "sig", "n": b64_int(numbers.n), "e": b64_int(numbers.e)}
    return {"keys": [
        {"kid": KIDS["RS256"], "alg": "RS256", **rsa_jwk},
        {"kid": KIDS["PS256"], "alg": "PS256", **rsa_jwk},
        {"kid": KIDS["ES256"], "alg": "ES256", "kty": "EC", "use": "sig", "crv": "P-256",
         "x": b64_int(point.x, 32), "y": b64_int(point.y, 32)},
    ]}


# --- Envoy configuration ------------------------------------------------------------------------

def plugin_config(jwks, backend="auto"):
    return {
        "signatureBackend": backend,
        "jwtRules": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": json.dumps(jwks)}],
        "policies": [
            {"name": "deny-debug", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/debug*"]}}]}]},
            {"name": "shop", "action": "ALLOW", "rules": [
                {"to": [{"operation": {"paths": ["/healthz"], "methods": ["GET"]}}]},
                {"from": [{"source": {"requestPrincipals": ["*"]}}],
                 "to": [{"operation": {"paths": ["/api/public/*"]}}]},
                {"from": [{"source": {"requestPrincipals": ["*"]}}],
                 "to": [{"operation": {"paths": ["/api/admin/*"]}}],
                 "when": [{"key": "request.auth.claims[realm_access][roles]", "values": ["admin"]}]},
            ]},
        ],
    }


def jwt_authn_filter(jwks, cached):
    """jwt_authn as istiod writes it for a RequestAuthentication: inline JWKS, payload in metadata
    under the issuer, the original token removed, and requires_any(provider, allow_missing) so a
    request without a token reaches RBAC."""
    provider = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": {"inline_string": json.dumps(jwks)},
        "payload_in_metadata": ISSUER,
        "forward": False,
        "normalize_payload_in_metadata": {"space_delimited_claims": ["scope", "permission"]},
    }
    if cached:
        provider["jwt_cache_config"] = {"jwt_cache_size": 1000}
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"origins-0": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "origins-0"}, {"allow_missing": {}}]}}}],
            "bypass_cors_preflight": True,
        },
    }


def rbac_filters():
    """The same policy as plugin_config, as two RBAC filters (DENY first, then ALLOW) reading the
    verified claims from jwt_authn's metadata, as Istio's request principals and claims do."""
    def claim(*path):
        return {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": ISSUER}] + [{"key": p} for p in path]}
    authenticated = {"metadata": {**claim("sub"), "value": {"string_match": {"safe_regex": {"regex": ".+"}}}}}
    admin = {"metadata": {**claim("realm_access", "roles"),
                          "value": {"list_match": {"one_of": {"string_match": {"exact": "admin"}}}}}}
    def path_prefix(prefix):
        return {"url_path": {"path": {"prefix": prefix}}}
    deny = {"action": "DENY", "policies": {"ns.deny-debug": {
        "permissions": [path_prefix("/debug")], "principals": [{"any": True}]}}}
    allow = {"action": "ALLOW", "policies": {
        "ns.shop[0]": {"permissions": [{"and_rules": {"rules": [
            {"url_path": {"path": {"exact": "/healthz"}}},
            {"header": {"name": ":method", "string_match": {"exact": "GET"}}}]}}],
            "principals": [{"any": True}]},
        "ns.shop[1]": {"permissions": [path_prefix("/api/public/")], "principals": [authenticated]},
        "ns.shop[2]": {"permissions": [path_prefix("/api/admin/")],
                       "principals": [{"and_ids": {"ids": [authenticated, admin]}}]},
    }}
    return [
        {"name": f"envoy.filters.http.rbac.{name}", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC", "rules": rules}}
        for name, rules in (("deny", deny), ("allow", allow))
    ]


def listener(name, http_filters):
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "normalize_path": True,
        "merge_slashes": True,
        "route_config": {"name": name, "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}],
        }]},
        "http_filters": http_filters + [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": manager}]}],
    }


def envoy_bootstrap(jwks, wasm_path, workdir, sdk_baseline):
    filters = {
        "no-auth": [],
        "native": [jwt_authn_filter(jwks, cached=False)] + rbac_filters(),
        "native-cached": [jwt_authn_filter(jwks, cached=True)] + rbac_filters(),
        "jwt-authz": [wasm_filter(plugin_config(jwks), wasm_path)],
        # Its own VM, so that the first one's memory gauge describes one plugin.
        "jwt-authz-vm": [wasm_filter(plugin_config(jwks, "vm"), wasm_path, name="jwt-authz-vm", vm_id="jwt-authz-vm")],
        FLOOR: [floor_filter(wasm_path)],
        NOOP: [noop_filter(workdir)],
        MANY_ISSUERS: [wasm_filter(many_issuers_config(jwks), wasm_path, name=MANY_ISSUERS)],
    }
    if sdk_baseline:
        filters[SDK_EMPTY] = [baseline_filter(sdk_baseline, "")]
        filters[SDK_HEADERS] = [baseline_filter(sdk_baseline, "read-headers")]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener(name, http_filters) for name, http_filters in filters.items()]},
    }


def many_issuers_config(jwks):
    """plugin_config with 99 other issuers (each with the same inline keys) before the bench's own."""
    config = plugin_config(jwks)
    decoys = [{"issuer": f"{ISSUER[:-len('shop')]}realm-{i:02d}", "audiences": [AUDIENCE], "jwks": json.dumps(jwks)}
              for i in range(99)]
    config["jwtRules"] = decoys + config["jwtRules"]
    return config


def floor_filter(wasm_path):
    # Same vm_id and code as jwt-authz: Envoy runs both plugins in one VM, so the VM's gauges
    # (which plugins sharing a VM share) describe that one VM.
    allow_all = {"policies": [{"name": "all", "action": "ALLOW", "rules": [{}]}]}
    return wasm_filter(allow_all, wasm_path, name="jwt-authz-floor")


def baseline_filter(module, configuration):
    name = "sdk-baseline-" + (configuration or "empty")
    return wasm_filter(configuration, module, name=name, vm_id="sdk-baseline")


def noop_filter(directory):
    module = directory / "noop.wasm"
    module.write_bytes(noop_module())
    return wasm_filter("", module, name="noop", vm_id="noop")


class BenchEnvoy:
    def __init__(self, workdir, jwks, wasm_path, baselines, sdk_baseline=None):
        self.workdir = Path(workdir)
        self.baselines = baselines
        config = self.workdir / "envoy.json"
        config.write_text(json.dumps(envoy_bootstrap(jwks, wasm_path, self.workdir, sdk_baseline), indent=1))
        command = [str(ENVOY_BIN), "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
                   "--admin-address-path", str(self.workdir / "admin.address"), "-l", "warning",
                   "--log-path", str(self.workdir / "envoy.log")]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=workdir)
        self.admin_port = None
        self.ports = {}
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.workdir / "envoy.log").read_text(errors="replace") if (self.workdir / "envoy.log").exists() else ""
                raise RuntimeError(f"Envoy did not start:\n{log[-3000:]}")
            time.sleep(0.1)

    def _ready(self):
        address = self.workdir / "admin.address"
        if not address.exists() or not address.read_text().strip():
            return False
        self.admin_port = int(address.read_text().strip().rsplit(":", 1)[1])
        try:
            status, _, text = http_request(self.admin_port, "GET", "/ready")
            if status != 200:
                return False
            _, _, listeners = http_request(self.admin_port, "GET", "/listeners?format=json")
        except OSError:
            return False
        for entry in json.loads(listeners).get("listener_statuses", []):
            self.ports[entry["name"]] = entry["local_address"]["socket_address"]["port_value"]
        return all(name in self.ports for name in LISTENERS + self.baselines)

    def stats(self, pattern):
        _, _, text = http_request(self.admin_port, "GET", f"/stats?filter={pattern}")
        return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)

    def memory(self):
        _, _, text = http_request(self.admin_port, "GET", "/memory")
        return json.loads(text)

    def stop(self):
        stop_process(self.process)


# --- running wrk ------------------------------------------------------------------------------------

def run_wrk(port, script, token_file, first, limit, duration, connections, *extra):
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(script),
               f"http://127.0.0.1:{port}", "--", str(token_file), str(first), str(limit), *extra]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"RESULT (.*)", output)
    if not match:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    result = {key: int(value) for key, value in (pair.split("=") for pair in match.group(1).split())}
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def check_listeners(envoy, hot_token, cold):
    """Each listener answers 200 to the admin token (and to a token of each algorithm); the auth
    listeners refuse a forged one."""
    forged = hot_token.rsplit(".", 1)[0] + "." + b64url(b"\x00" * 256)
    for alg in OTHER_ALGS:
        for name in ALG_LISTENERS:
            status, _, _ = http_request(envoy.ports[name], "GET", PATH, {"Authorization": f"Bearer {cold[alg][-1]}"})
            if status != 200:
                raise RuntimeError(f"{name}: {alg} token {status}")
    for name in LISTENERS:
        status, _, _ = http_request(envoy.ports[name], "GET", PATH, {"Authorization": f"Bearer {hot_token}"})
        bad, _, _ = http_request(envoy.ports[name], "GET", PATH, {"Authorization": f"Bearer {forged}"})
        anonymous, _, _ = http_request(envoy.ports[name], "GET", PATH)
        # Without a token native RBAC answers 403; jwt-authz answers 401 with a challenge.
        refused = (bad, anonymous) == (200, 200) if name == "no-auth" else (bad == 401 and anonymous in (401, 403))
        if status != 200 or not refused:
            raise RuntimeError(f"{name}: admin token {status}, forged token {bad}, no token {anonymous}")


def check_dpop(envoy, holder, bound_token, hot_token):
    """The DPoP listeners take a proven request once, and refuse its replay and the bound token as a
    bearer token (so the workload measures what it claims to)."""
    for name in DPOP_LISTENERS:
        [proof] = mint_proofs(holder, bound_token, 1)
        headers = {"Host": DPOP_HOST, "Authorization": f"DPoP {bound_token}", "DPoP": proof}
        first = http_request(envoy.ports[name], "GET", PATH, headers)[0]
        replay = http_request(envoy.ports[name], "GET", PATH, headers)[0]
        bearer = http_request(envoy.ports[name], "GET", PATH, {"Authorization": f"Bearer {bound_token}"})[0]
        if (first, replay, bearer) != (200, 401, 401):
            raise RuntimeError(f"{name}: DPoP {first}, replayed proof {replay}, bound token as bearer {bearer}")


def median(values):
    return statistics.median(values) if values else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wasm", default=str(WASM_PATH))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--sdk-baseline", help="tools/sdk-baseline built for wasm32 (make bench builds it)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (make bench installs it)")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="jwt-authz-bench-"))
    per_run = COLD_TOKENS_PER_SECOND * args.duration
    keys, hot_token, cold = load_or_mint(per_run * args.rounds)
    jwks = jwks_of(keys)
    workloads = {COLD: "RS256", **{f"cold-{alg}": alg for alg in OTHER_ALGS}}
    for workload, alg in workloads.items():
        (workdir / f"{workload}.txt").write_text("\n".join(cold[alg]) + "\n")
    (workdir / "hot.txt").write_text(hot_token + "\n")
    script = workdir / "tokens.lua"
    script.write_text(WRK_SCRIPT)
    holder = dpop_holder()
    bound_token = dpop_token(keys, holder[2])
    proofs_per_run = DPOP_PROOFS_PER_SECOND * args.duration

    baselines = BASELINES + ((SDK_EMPTY, SDK_HEADERS) if args.sdk_baseline else ())
    sdk_baseline = Path(args.sdk_baseline).resolve() if args.sdk_baseline else None
    envoy = BenchEnvoy(workdir, jwks, Path(args.wasm).resolve(), baselines, sdk_baseline)
    try:
        check_listeners(envoy, hot_token, cold)
        check_dpop(envoy, holder, bound_token, hot_token)
        for name in LISTENERS + baselines:  # warm-up: connections, caches, V8 tiering
            run_wrk(envoy.ports[name], script, workdir / "hot.txt", 0, 1, 1, args.connections)
        def listeners_of(workload):
            if workload == DPOP:
                return DPOP_LISTENERS
            return LISTENERS if workload in (HOT, COLD) else ALG_LISTENERS
        results = {(name, workload): [] for workload in (HOT, *workloads, DPOP) for name in listeners_of(workload)}
        results.update({(name, HOT): [] for name in baselines})
        for round_index in range(args.rounds):
            for workload in (HOT, *workloads, DPOP):
                # Rotate the order each round so no listener always runs first or last.
                names = listeners_of(workload)
                shift = round_index % len(names)
                order = names[shift:] + names[:shift]
                for name in order + (baselines if workload == HOT else ()):
                    extra = ()
                    if workload == HOT:
                        token_file, first, limit = workdir / "hot.txt", 0, 1
                    elif workload == DPOP:
                        # Fresh proofs for this run: a proof is accepted once, within 60 s of its iat.
                        token_file, first, limit = workdir / "proofs.txt", 0, proofs_per_run
                        token_file.write_text("\n".join(mint_proofs(holder, bound_token, proofs_per_run)) + "\n")
                        extra = (bound_token,)
                    else:
                        token_file, first, limit = workdir / f"{workload}.txt", round_index * per_run, per_run
                    result = run_wrk(envoy.ports[name], script, token_file, first, limit, args.duration,
                                     args.connections, *extra)
                    results[(name, workload)].append(result)
                    flags = []
                    if result["non2xx"] or result["socket_errors"]:
                        flags.append(f"{result['non2xx']} non-2xx, {result['socket_errors']} socket errors")
                    if workload != HOT and result["wrapped"] and name != "no-auth":
                        flags.append("ran out of fresh tokens: some were reused")
                    print(f"round {round_index + 1} {workload:10} {name:13} {result['rps']:9.0f} req/s  "
                          f"p50 {result['p50_us'] / 1000:6.2f} ms  p99 {result['p99_us'] / 1000:6.2f} ms"
                          + (f"  [{'; '.join(flags)}]" if flags else ""), flush=True)
        time.sleep(1.2)  # the plugin refreshes its gauges every 500 ms
        wasm_stats = envoy.stats("jwt_authz")
        memory = envoy.memory()
    finally:
        envoy.stop()

    summary = {}
    for (name, workload), runs in results.items():
        summary.setdefault(workload, {})[name] = {
            "rps": median([r["rps"] for r in runs]),
            "p50_ms": median([r["p50_us"] for r in runs]) / 1000,
            "p99_ms": median([r["p99_us"] for r in runs]) / 1000,
            "failed_requests": sum(r["non2xx"] + r["socket_errors"] for r in runs),
        }
    print()
    print(f"Envoy {envoy_version()}, 1 worker, wrk -t1 -c{args.connections}, {args.rounds} rounds x {args.duration}s, "
          f"median of rounds; token {len(hot_token)} bytes; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    print()
    print("| workload | listener | req/s | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|")
    for workload in (HOT, *workloads, DPOP):
        for name in listeners_of(workload):
            row = summary[workload][name]
            print(f"| {workload} | {name} | {row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} |")
    print()
    def ratio(workload, ours, theirs):
        row = summary[workload]
        return f"{row[ours]['rps'] / row[theirs]['rps']:.2f}" if ours in row and theirs in row else "–"
    print("| workload | jwt-authz / native | jwt-authz-vm / native | jwt-authz / native-cached | jwt-authz / no-auth |")
    print("|---|---:|---:|---:|---:|")
    for workload in (HOT, *workloads):
        print(f"| {workload} | {ratio(workload, 'jwt-authz', 'native')} | {ratio(workload, 'jwt-authz-vm', 'native')} | "
              f"{ratio(workload, 'jwt-authz', 'native-cached')} | {ratio(workload, 'jwt-authz', 'no-auth')} |")
    floor, noop, no_auth = (summary[HOT][name]["rps"] for name in (FLOOR, NOOP, "no-auth"))
    print(f"Proxy-Wasm floors (hot): a no-op Wasm module {noop:.0f} req/s = {noop / no_auth:.2f} of no-auth; "
          f"jwt-authz without jwtRules (one allow-all policy) {floor:.0f} req/s = {floor / no_auth:.2f}; "
          f"jwt-authz hot = {summary[HOT]['jwt-authz']['rps'] / noop:.2f} of the no-op module")
    for name in DPOP_LISTENERS:
        proven, plain = summary[DPOP][name], summary[HOT][name]
        print(f"DPoP ({name}): the hot token key-bound with a new ES256 proof per request {proven['rps']:.0f} req/s = "
              f"{proven['rps'] / plain['rps']:.2f} of the same token as a bearer token; p50 {proven['p50_ms']:.2f} ms "
              f"vs {plain['p50_ms']:.2f} ms; a proof costs {1e6 / proven['rps'] - 1e6 / plain['rps']:.0f} µs of "
              f"the worker per request")
    many, one = summary[HOT][MANY_ISSUERS]["rps"], summary[HOT]["jwt-authz"]["rps"]
    print(f"Issuers (hot): jwt-authz with 100 jwtRules entries, the token's the last, {many:.0f} req/s = "
          f"{many / one:.2f} of jwt-authz with one")
    if args.sdk_baseline:
        empty, headers = (summary[HOT][name]["rps"] for name in (SDK_EMPTY, SDK_HEADERS))
        print(f"Same SDK and profile as jwt-authz (tools/sdk-baseline): doing nothing {empty:.0f} req/s = "
              f"{empty / no_auth:.2f} of no-auth; reading the request headers {headers:.0f} req/s = "
              f"{headers / no_auth:.2f}")
    print()
    vm_memory = int(next((v for k, v in wasm_stats.items() if k.endswith("jwt_authz.wasm_memory_bytes")), 0))
    cache_entries = int(next((v for k, v in wasm_stats.items() if k.endswith("token_cache_entries")), 0))
    print(f"jwt-authz VM: linear memory {vm_memory / 2**20:.2f} MiB with {cache_entries} cached tokens; "
          f"module {Path(args.wasm).stat().st_size} bytes; Envoy heap {int(memory['allocated']) / 2**20:.1f} MiB")
    failed = sum(row["failed_requests"] for workload in summary.values() for row in workload.values())
    if failed:
        print(f"WARNING: {failed} requests failed or were not 2xx: the numbers above are not comparable")
    print(f"total bench time {time.monotonic() - started:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "wasm_memory_bytes": vm_memory,
                                               "token_cache_entries": cache_entries}, indent=1))
    shutil.rmtree(workdir, ignore_errors=True)


def envoy_version():
    output = subprocess.run([str(ENVOY_BIN), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"/(\d+\.\d+\.\d+)/", output)
    return match.group(1) if match else "?"


if __name__ == "__main__":
    main()
