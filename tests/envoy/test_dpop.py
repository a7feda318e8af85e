"""DPoP (RFC 9449) in real Envoy with two workers: access tokens bound to a key (`cnf.jkt`) minted
by the test bed with the dev IdP's key, proofs and holder keys made by node's `jose`
(testbed/dpop.py). A valid proof passes, once: its replay is refused by whichever worker sees it;
every defect of a proof, a missing one and a Bearer downgrade are refused with the DPoP challenge;
a cached token is proven anew on every request; `dpop: required` refuses bearer tokens and
`dpop: disabled` key-bound ones."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.config import shop_config
from testbed.dpop import Holder, dpop, sign
from testbed.envoy import start_envoy
from testbed.expect import bearer, denial_reason, expect_allowed
from testbed.tokens import mint

ALGS = "RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512 EdDSA"


@pytest.fixture(scope="module")
def envoy(idp, backend):
    with start_envoy(shop_config(idp), backend=backend, idp=idp, concurrency=2) as envoy:
        yield envoy


@pytest.fixture(scope="module")
def holders():
    return Holder.generate("ES256", "ES256", "EdDSA", "PS256")


def url(envoy, path):
    return f"http://127.0.0.1:{envoy.port}{path}"


def expect_dpop_challenge(envoy, response, path, error="invalid_dpop_proof"):
    status, headers, _ = response
    challenge = headers.get("www-authenticate", "")
    assert status == 401, response
    assert challenge.startswith(f'DPoP realm="{url(envoy, path)}", algs="{ALGS}", error="{error}"'), challenge


def expect_dpop_refused(envoy, response, path, reason, error="invalid_dpop_proof"):
    expect_dpop_challenge(envoy, response, path, error)
    assert denial_reason(envoy, path) == reason, (path, reason)


def test_a_valid_proof_passes_and_each_new_proof_of_the_cached_token_too(envoy, idp, holders):
    holder = holders[0]
    token = mint(idp, "bob", claims=holder.cnf)
    paths = [f"/api/public/dpop/valid/{i}" for i in range(3)]
    proofs = sign(*(holder.proof("GET", url(envoy, path), token) for path in paths))
    for path, proof in zip(paths, proofs):
        echoed = expect_allowed(envoy.get(path, dpop(token, proof)))
        # As any token: removed before the upstream unless forwardOriginalToken, with its proof.
        assert not {"authorization", "dpop"} & {name.lower() for name in echoed["headers"]}, echoed


@pytest.mark.parametrize("alg_index", [2, 3], ids=["EdDSA", "PS256"])
def test_proofs_of_other_algorithms(envoy, idp, holders, alg_index):
    holder = holders[alg_index]
    token = mint(idp, "bob", claims=holder.cnf)
    path = f"/api/public/dpop/alg/{holder.alg}"
    [proof] = sign(holder.proof("POST", url(envoy, path), token))
    expect_allowed(envoy.get(path, dpop(token, proof), method="POST"))


def test_a_replayed_proof_is_refused_by_every_worker(envoy, idp, holders):
    """Each proof is sent twice, on two new connections: Envoy's two workers take connections as
    the kernel hands them out, so over 16 proofs both orders of the two workers occur (the log
    lines' thread ids show it). The first use of each decides as usual (403 here: the path needs
    the admin role), the second is a replay whichever worker sees it."""
    holder = holders[0]
    token = mint(idp, "bob", claims=holder.cnf)
    paths = [f"/api/admin/dpop/replay/{i}" for i in range(16)]
    proofs = sign(*(holder.proof("GET", url(envoy, path), token) for path in paths))
    for path, proof in zip(paths, proofs):
        assert envoy.get(path, dpop(token, proof))[0] == 403
        expect_dpop_challenge(envoy, envoy.get(path, dpop(token, proof)), path)
    # Each path's two log lines: `[<thread>][info][wasm] … denied <status> reason=<code> … <path>`.
    line = re.compile(r"\]\[(\d+)\]\[\w+\]\[wasm\].* denied (\d+) reason=(\w+) .*resource=\S+?(/api/\S+)$", re.M)
    deadline = time.monotonic() + 5
    while True:
        seen = {}
        for thread, status, reason, path in line.findall(envoy.log_text()):
            seen.setdefault(path, []).append((status, reason, thread))
        if all(len(seen.get(path, [])) == 2 for path in paths) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for path in paths:
        assert [entry[:2] for entry in seen.get(path, [])] == [
            ("403", "rbac_access_denied"), ("401", "dpop_proof_replayed")], (path, seen.get(path))
    assert any(seen[path][0][2] != seen[path][1][2] for path in paths), f"one worker took every request: {seen}"


def test_every_defect_of_a_proof_is_refused(envoy, idp, holders):
    holder, other = holders[0], holders[1]
    token = mint(idp, "bob", claims=holder.cnf)
    now = int(time.time())
    base = "/api/public/dpop/defect"
    cases = {
        "wrong-htm": (holder.proof("POST", url(envoy, f"{base}/wrong-htm"), token), "dpop_proof_htm_mismatch"),
        "wrong-htu": (holder.proof("GET", url(envoy, f"{base}/elsewhere"), token), "dpop_proof_htu_mismatch"),
        "https-htu": (holder.proof("GET", url(envoy, f"{base}/https-htu").replace("http:", "https:"), token),
                      "dpop_proof_htu_mismatch"),
        "stale-iat": (holder.proof("GET", url(envoy, f"{base}/stale-iat"), token, iat=now - 300), "dpop_proof_iat_stale"),
        "future-iat": (holder.proof("GET", url(envoy, f"{base}/future-iat"), token, iat=now + 300),
                       "dpop_proof_iat_stale"),
        "wrong-ath": (holder.proof("GET", url(envoy, f"{base}/wrong-ath"), mint(idp, "bob")), "dpop_proof_ath_mismatch"),
        "no-ath": (holder.proof("GET", url(envoy, f"{base}/no-ath"), token, ath=None), "dpop_proof_malformed"),
        "wrong-key": (other.proof("GET", url(envoy, f"{base}/wrong-key"), token), "dpop_proof_key_mismatch"),
        "typ-jwt": (holder.proof("GET", url(envoy, f"{base}/typ-jwt"), token, header={"typ": "JWT"}), "dpop_proof_typ"),
        "no-jwk": (holder.proof("GET", url(envoy, f"{base}/no-jwk"), token, header={"jwk": None}),
                   "dpop_proof_key_invalid"),
        "private-jwk": (holder.proof("GET", url(envoy, f"{base}/private-jwk"), token,
                                     header={"jwk": holder.private_jwk}), "dpop_proof_key_invalid"),
        # Signed by the other key, naming the bound one: the signature is what fails.
        "forged": ({**other.proof("GET", url(envoy, f"{base}/forged"), token), "header":
                    {"typ": "dpop+jwt", "jwk": holder.public_jwk}}, "dpop_proof_signature_invalid"),
    }
    proofs = sign(*(request for request, _ in cases.values()))
    for (case, (_, reason)), proof in zip(cases.items(), proofs):
        path = f"{base}/{case}"
        method = "GET"
        expect_dpop_refused(envoy, envoy.get(path, dpop(token, proof), method=method), path, reason)


def test_the_scheme_must_match_the_binding(envoy, idp, holders):
    holder = holders[0]
    bound = mint(idp, "bob", claims=holder.cnf)
    plain = mint(idp, "bob")
    base = "/api/public/dpop/scheme"
    [proof, plain_proof] = sign(holder.proof("GET", url(envoy, f"{base}/downgrade"), bound),
                                holder.proof("GET", url(envoy, f"{base}/unbound"), plain))
    # A stolen bound token sent as a bearer token, with or without the proof.
    path = f"{base}/downgrade"
    expect_dpop_refused(envoy, envoy.get(path, {**bearer(bound), "DPoP": proof}), path, "dpop_bearer_downgrade",
                        error="invalid_token")
    path = f"{base}/downgrade-query"
    expect_dpop_refused(envoy, envoy.get(f"{path}?access_token={bound}"), path, "dpop_bearer_downgrade",
                        error="invalid_token")
    path = f"{base}/missing"
    expect_dpop_refused(envoy, envoy.get(path, {"Authorization": f"DPoP {bound}"}), path, "dpop_proof_missing")
    path = f"{base}/twice"
    expect_dpop_refused(envoy, envoy.get(path, [("Authorization", f"DPoP {bound}"), ("DPoP", proof), ("DPoP", proof)]),
                        path, "dpop_proof_multiple")
    path = f"{base}/unbound"
    expect_dpop_refused(envoy, envoy.get(path, dpop(plain, plain_proof)), path, "dpop_token_unbound",
                        error="invalid_token")
    # A bearer token stays a bearer token.
    expect_allowed(envoy.get(f"{base}/bearer", bearer(plain)))


@pytest.fixture(scope="module")
def required(idp, backend):
    with start_envoy(shop_config(idp, dpop="required"), backend=backend, idp=idp) as envoy:
        yield envoy


@pytest.fixture(scope="module")
def disabled(idp, backend):
    with start_envoy(shop_config(idp, dpop="disabled"), backend=backend, idp=idp) as envoy:
        yield envoy


def test_required_refuses_bearer_tokens(required, idp, holders):
    holder = holders[0]
    token = mint(idp, "bob", claims=holder.cnf)
    [proof] = sign(holder.proof("GET", url(required, "/api/public/required/ok"), token))
    expect_allowed(required.get("/api/public/required/ok", dpop(token, proof)))
    path = "/api/public/required/bearer"
    expect_dpop_refused(required, required.get(path, bearer(mint(idp, "bob"))), path, "dpop_required",
                        error="invalid_token")


def test_disabled_refuses_bound_tokens_and_reads_no_dpop_scheme(disabled, idp, holders):
    holder = holders[0]
    token = mint(idp, "bob", claims=holder.cnf)
    path = "/api/public/disabled/bound"
    expect_dpop_refused(disabled, disabled.get(path, bearer(token)), path, "dpop_disabled", error="invalid_token")
    # The DPoP scheme is not a token location here: the request carries no token.
    [proof] = sign(holder.proof("GET", url(disabled, "/api/public/disabled/scheme"), token))
    status, headers, _ = disabled.get("/api/public/disabled/scheme", dpop(token, proof))
    assert (status, headers.get("www-authenticate", "").split(" ")[0]) == (401, "Bearer"), (status, headers)
    assert denial_reason(disabled, "/api/public/disabled/scheme") == "jwt_missing"
    expect_allowed(disabled.get("/api/public/disabled/bearer", bearer(mint(idp, "bob"))))


def test_the_dev_idp_issues_dpop_bound_tokens_that_pass_with_their_proofs(envoy, idp, holders):
    """As a Keycloak client with "Require DPoP bound tokens": the token request carries a proof for
    the token endpoint, the token is bound to its key (`token_type` DPoP), and the API call then
    needs a new proof by that key."""
    holder = holders[0]
    form = {"grant_type": "password", "client_id": "shop-dpop", "username": "bob", "password": "bob"}
    status, answer = idp.token_request(form)
    assert (status, answer.get("error_description")) == (400, "DPoP proof is missing"), answer
    [token_proof] = sign(holder.proof("POST", idp.token_url, "", ath=None))
    status, answer = idp.token_request(form, dpop=token_proof)
    assert (status, answer.get("token_type")) == (200, "DPoP"), answer
    token = answer["access_token"]
    path = "/api/public/dpop/idp"
    [proof] = sign(holder.proof("GET", url(envoy, path), token))
    assert expect_allowed(envoy.get(path, dpop(token, proof)))["headers"].get("x-user") == "bob"
    path = "/api/public/dpop/idp-bearer"
    expect_dpop_refused(envoy, envoy.get(path, bearer(token)), path, "dpop_bearer_downgrade", error="invalid_token")
    # The proof of the token request is no proof for the API (it has no `ath`, to begin with).
    path = "/api/public/dpop/idp-token-proof"
    expect_dpop_refused(envoy, envoy.get(path, dpop(token, token_proof)), path, "dpop_proof_malformed")


def test_the_documented_client_example_runs(envoy, idp):
    """examples/dpop/client.py (docs/security.md), against the test bed's IdP and Envoy instead of
    `make run`'s ports: its own key and proofs (python `cryptography`), four answers as documented."""
    script = Path(__file__).resolve().parents[2] / "examples" / "dpop" / "client.py"
    result = subprocess.run([sys.executable, str(script), "--idp", idp.issuer, "--api", url(envoy, "/api/public/items")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.strip().startswith("with a new proof: 200") for line in lines), lines
    assert any("the same proof again: 401 DPoP" in line and "invalid_dpop_proof" in line for line in lines), lines
    assert any("as a bearer token: 401 DPoP" in line and "invalid_token" in line for line in lines), lines
