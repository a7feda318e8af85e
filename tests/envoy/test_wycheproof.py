"""Google's Wycheproof vectors inside real Envoy (tools/wycheproof-harness, built by `make harness`):
against Envoy's own `verify_signature` foreign function, through the same HostCrypto code the filter
uses (SPKI from the JWK, raw-to-DER ECDSA, protobuf, the probe), and against the filter's in-VM
verifiers compiled for wasm32 (32-bit limbs: not the arithmetic the native unit tests run).

Every vector must give Wycheproof's answer (acceptable ones either); 8192-bit RSA keys are refused
by the key parser and reported as skipped."""

import json
import os
from pathlib import Path

import pytest

from testbed.envoy import start_envoy, wasm_filter
from testbed.paths import REPO_ROOT

# Envoy runs in a work directory of its own: the path it is given must be absolute.
HARNESS = Path(os.environ.get(
    "JWT_AUTHZ_HARNESS", REPO_ROOT / "target/wycheproof-harness/wasm32-wasip1/release/wycheproof_harness.wasm")).resolve()
HOST_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512"]
ALL_ALGORITHMS = HOST_ALGORITHMS + ["PS256", "PS384", "PS512", "EdDSA"]


@pytest.fixture(scope="module")
def harness(backend):
    if not HARNESS.exists():
        pytest.fail(f"{HARNESS} is missing: run `make harness`")
    with start_envoy({}, backend=backend, filters=[wasm_filter({}, HARNESS, name="wycheproof", vm_id="wycheproof")]) as envoy:
        yield envoy


def report(envoy, path):
    status, _, body = envoy.get(path)
    assert status == 200, body
    return json.loads(body)


def assert_clean(tallies, algorithms):
    assert "load" not in tallies, tallies.get("load")
    for alg in algorithms:
        tally = tallies[alg]
        assert tally["failed"] == [], f"{alg}: {len(tally['failed'])} wrong answers: {tally['failed'][:20]}"
        assert tally["passed"] >= 100, f"{alg}: only {tally['passed']} vectors ran"


def test_envoys_verify_signature_passes_wycheproof(harness):
    answer = report(harness, "/host")
    # Envoy 1.40 verifies exactly these through the probe; PSS and Ed25519 stay in the VM.
    assert answer["host_algorithms"].split() == HOST_ALGORITHMS, answer
    tallies = answer["report"]
    assert_clean(tallies, HOST_ALGORITHMS)
    for alg in ["PS256", "EdDSA"]:
        assert tallies.get(alg, {"passed": 0})["passed"] == 0
    assert tallies["RS256"]["skipped"] > 0 and "above 4096" in tallies["RS256"]["skip_reason"]


def test_in_vm_verifiers_pass_wycheproof_as_compiled_for_wasm32(harness):
    assert_clean(report(harness, "/vm")["report"], ALL_ALGORITHMS)
