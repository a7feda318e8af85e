#!/usr/bin/env python3
"""Soak: mixed valid/invalid traffic through Envoy (4 workers) running dist/plugin.wasm while the
identity provider rotates its signing key and goes down and comes back.

Bounded (--seconds, at most 280). The filter refreshes keys every 10 s here (cacheDuration), so
the outage makes real fetches fail; rotations keep the old keys published as passive keys, as
Keycloak does. Checks, per request class:
  valid      tokens of the first key: always 200 (kept keys survive rotation, stale-if-error the outage)
  forbidden  an authenticated caller without the role: always 403
  invalid    alg none, HS256 with the public key, another signer, expired, tampered, garbage,
             duplicate members: always 401, never 200
  anonymous  no token on a protected path: always 401; /healthz without token: always 200
  rotated    tokens of a new key: 200 once the unknown kid triggered a refetch (during the outage
             that refetch fails, so 401 until the IdP is back); counted, never judged
Prints counts, Envoy's RSS and the Wasm VM's linear memory at start and end; exits 1 on any
miss (a valid request lost, an invalid one let through, an Envoy that died).
"""

import argparse
import hashlib
import hmac
import http.client
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

# The test bed shared with the tests (tools/testbed, found beside this script).
from testbed.config import shop_config
from testbed.envoy import start_envoy
from testbed.services import start_backend, start_idp
from testbed.tokens import b64url, json_segment, keycloak_payload, mint, raw_token, sign_rs256

PROTECTED = "/api/public/x"
ADMIN = "/api/admin/x"


def process_rss_kib(pid):
    """VmRSS of pid, or of its envoy descendant when pid is the Python wrapper around it."""
    def read(p, name):
        try:
            return Path(f"/proc/{p}/{name}").read_text()
        except OSError:
            return ""
    pending, best = [pid], 0
    while pending:
        current = pending.pop()
        status = read(current, "status")
        if read(current, "comm").strip() == "envoy":
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    best = max(best, int(line.split()[1]))
        for task in Path(f"/proc/{current}/task").glob("*"):
            pending.extend(int(child) for child in read(f"{current}/task/{task.name}", "children").split())
    return best


def wasm_memory(envoy):
    return envoy.stats().get("wasmcustom.jwt_authz.wasm_memory_bytes", "n/a")


def duplicate_iss_token(idp, claims):
    """Correctly signed, but with a second `iss` ahead of the real one."""
    payload = '{"iss":"https://evil.example",' + json.dumps(claims)[1:]
    signing_input = f"{json_segment({'alg': 'RS256', 'kid': idp.kid})}.{b64url(payload)}"
    return f"{signing_input}.{b64url(sign_rs256(signing_input, idp.private_key))}"


class Traffic:
    """Request mixes and the tally of what came back."""

    def __init__(self, envoy, idp):
        self.envoy, self.idp = envoy, idp
        self.lock = threading.Lock()
        self.outcomes = Counter()
        self.misses = []
        long_lived = int(time.time()) + 3600
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        alice = keycloak_payload(idp.issuer, "alice")
        jwks_secret = json.dumps(idp.certs()).encode()
        none_token = raw_token({"alg": "none"}, alice, "")
        hs_input = f"{json_segment({'alg': 'HS256', 'kid': idp.kid})}.{json_segment(alice)}"
        valid = mint(idp, "bob", exp=long_lived)
        header, payload, signature = valid.split(".")
        self.valid = [mint(idp, user, exp=long_lived) for user in ("alice", "bob", "testuser")]
        self.forbidden = [valid]
        self.invalid = [
            none_token,
            f"{hs_input}.{b64url(hmac.new(jwks_secret, hs_input.encode(), hashlib.sha256).digest())}",
            mint(idp, "alice", key=other, exp=long_lived),
            mint(idp, "alice", exp=int(time.time()) - 600),
            f"{header}.{b64url(json.dumps({**alice, 'preferred_username': 'mallory'}))}.{signature}",
            "garbage",
            f"{header}.{payload[:-4]}.{signature}",
            duplicate_iss_token(idp, alice),
        ]
        self.rotated = []

    def record(self, kind, status, expected):
        with self.lock:
            self.outcomes[(kind, status)] += 1
            if expected is not None and status not in expected:
                self.misses.append((time.strftime("%H:%M:%S"), kind, status))

    def worker(self, stop, index):
        connection = None
        sequence = index
        while not stop.is_set():
            sequence += 1
            kind, path, headers, expected = self.pick(sequence)
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.envoy.port, timeout=10)
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
                status = response.status
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as error:
                status = f"error:{type(error).__name__}"
                connection = None
            self.record(kind, status, expected)

    def pick(self, sequence):
        choice = sequence % 10
        if choice < 4:
            token = self.valid[sequence % len(self.valid)]
            path = PROTECTED if sequence % 3 else ADMIN if token == self.valid[0] else PROTECTED
            return "valid", path, {"Authorization": f"Bearer {token}"}, {200}
        if choice == 4:
            return "forbidden", ADMIN, {"Authorization": f"Bearer {self.forbidden[0]}"}, {403}
        if choice < 8:
            token = self.invalid[sequence % len(self.invalid)]
            path = "/healthz" if sequence % 2 else PROTECTED
            return "invalid", path, {"Authorization": f"Bearer {token}"}, {401}
        if choice == 8:
            if sequence % 2:
                return "anonymous", "/healthz", {}, {200}
            return "anonymous", PROTECTED, {}, {401}
        with self.lock:
            rotated = list(self.rotated)
        if rotated:
            return "rotated", PROTECTED, {"Authorization": f"Bearer {rotated[sequence % len(rotated)]}"}, None
        return "anonymous", "/healthz", {}, {200}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    seconds = min(args.seconds, 280)
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    with start_idp(workdir) as idp, start_backend(workdir) as backend, \
            start_envoy(shop_config(idp, cacheDuration="10s", staleIfError="1h", unknownKidRefetchInterval="5s"),
                        backend=backend, idp=idp, concurrency=4) as envoy:
        traffic = Traffic(envoy, idp)
        # Warm up: every worker fetches its keys on its first request.
        for _ in range(40):
            envoy.get(PROTECTED, {"Authorization": f"Bearer {traffic.valid[0]}"})
        time.sleep(1.5)
        start_rss, start_wasm = process_rss_kib(envoy.process.pid), wasm_memory(envoy)
        stop = threading.Event()
        threads = [threading.Thread(target=traffic.worker, args=(stop, i), daemon=True) for i in range(args.clients)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        events = [
            (0.25, "rotate the IdP's signing key (old key kept passive)",
             lambda: (idp.rotate(keep_previous=True), traffic.rotated.append(mint(idp, "bob")))),
            (0.40, "IdP down (certs answer 500)", lambda: idp.certs_mode(status=500)),
            (0.65, "IdP back", lambda: idp.reset_certs_mode()),
            (0.75, "rotate again (old key kept passive)",
             lambda: (idp.rotate(keep_previous=True), traffic.rotated.append(mint(idp, "alice")))),
        ]
        for fraction, label, action in events:
            delay = began + fraction * seconds - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            action()
            print(f"[{time.monotonic() - began:6.1f}s] {label}", flush=True)
        time.sleep(max(0.0, began + seconds - time.monotonic()))
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
        elapsed = time.monotonic() - began
        alive = envoy.exit_code is None and envoy.get("/healthz")[0] == 200
        end_rss, end_wasm = process_rss_kib(envoy.process.pid), wasm_memory(envoy)
        stats = envoy.stats()

    total = sum(traffic.outcomes.values())
    print(f"\nsoak: {elapsed:.0f}s, {total} requests ({total / elapsed:.0f}/s), {args.clients} clients, 4 Envoy workers")
    for (kind, status), count in sorted(traffic.outcomes.items(), key=lambda item: (item[0][0], str(item[0][1]))):
        print(f"  {kind:10} {status!s:>6}: {count}")
    print(f"  filter counters: " + ", ".join(
        f"{name.split('.')[-1]}={value}" for name, value in sorted(stats.items())
        if name.startswith("wasmcustom.jwt_authz.") and "memory" not in name))
    print(f"envoy RSS: start {start_rss} KiB, end {end_rss} KiB ({end_rss - start_rss:+d} KiB)")
    print(f"wasm VM linear memory: start {start_wasm} bytes, end {end_wasm} bytes")
    print(f"envoy alive at the end: {alive}")
    lost = sum(1 for _, kind, _ in traffic.misses if kind in ("valid", "forbidden"))
    let_through = sum(1 for _, kind, status in traffic.misses if kind in ("invalid", "anonymous") and status == 200)
    print(f"valid requests lost: {lost}; invalid requests let through: {let_through}; "
          f"other unexpected answers: {len(traffic.misses) - lost - let_through}")
    for miss in traffic.misses[:20]:
        print("  miss:", miss)
    return 0 if alive and not traffic.misses else 1


if __name__ == "__main__":
    sys.exit(main())
