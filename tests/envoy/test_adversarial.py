"""Hostile input through real Envoy: every attack gets the right 401/403, nothing gets through, and
Envoy keeps serving afterwards. Also: size and depth limits, and fail-closed configuration."""

import hashlib
import hmac
import http.client
import json
import time

import pytest
from cryptography.hazmat.primitives import serialization

from testbed.config import jwt_rule, shop_config, shop_policies
from testbed.envoy import start_envoy
from testbed.expect import (ALG, BASE64, FETCH, FORM, ISSUER, JSON, KID, VERIFY, bearer, expect_allowed,
                            expect_forbidden, expect_refused, expect_rejected)
from testbed.services import start_idp
from testbed.tokens import b64url, b64url_decode, json_segment, keycloak_payload, mint, raw_token, sign_rs256
from testbed.wasm import trapping_module

DUPLICATE = "Jwt header or payload has a duplicate JSON member"
TOO_DEEP = "Jwt header or payload is nested too deeply"
TOO_LARGE = "Jwt exceeds the maximum size"
CRIT = "Jwt header [crit] is not supported"
PROTECTED = "/api/public/x"  # any authenticated caller may; a bypass would answer 200 here
ADMIN = "/api/admin/x"  # only callers with the admin realm role


@pytest.fixture(scope="module")
def attacker(tmp_path_factory):
    """A second identity provider the attacker controls; its /_test/hits shows whether anyone called it."""
    with start_idp(tmp_path_factory.mktemp("attacker-idp")) as server:
        yield server


@pytest.fixture(scope="module")
def guarded(idp, backend, attacker):
    """The shop configuration; the attacker's IdP is even a reachable Envoy cluster."""
    with start_envoy(shop_config(idp), backend=backend, idp=idp, clusters={"attacker": attacker.port}) as envoy:
        yield envoy


@pytest.fixture(autouse=True)
def still_serving(request):
    """After every test, each Envoy it used is alive and still answers."""
    yield
    for name in ("guarded", "limited"):
        if name in request.fixturenames:
            envoy = request.getfixturevalue(name)
            assert envoy.exit_code is None, envoy.log_tail()
            assert envoy.get("/healthz")[0] == 200


# --- Token construction ------------------------------------------------------------------------------

def signed_raw(idp, header_json, payload_json, key=None):
    """A token whose header and payload are exactly these JSON texts, RS256-signed with the IdP key."""
    signing_input = f"{b64url(header_json)}.{b64url(payload_json)}"
    return f"{signing_input}.{b64url(sign_rs256(signing_input, key or idp.private_key))}"


def hs256(header, payload, secret):
    signing_input = f"{json_segment(header)}.{json_segment(payload)}"
    return f"{signing_input}.{b64url(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def public_pem(idp):
    return idp.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def signing_jwk(idp):
    return next(key for key in idp.certs()["keys"] if key["kid"] == idp.kid)


def payload_json(idp, user="bob"):
    return json.dumps(keycloak_payload(idp.issuer, user))


def header_json(idp):
    return json.dumps({"alg": "RS256", "typ": "JWT", "kid": idp.kid})


def with_duplicate(document_json, name, first_value):
    """document_json with `"name": first_value` inserted before its other members."""
    return '{' + json.dumps(name) + ':' + json.dumps(first_value) + ',' + document_json[1:]


def alg_none(idp, alg="none", signature=""):
    return raw_token({"alg": alg, "typ": "JWT"}, keycloak_payload(idp.issuer, "alice"), signature)


def nested(depth):
    return "[" * depth + "1" + "]" * depth


ATTACKS = {
    # Algorithm attacks: refused before any key is looked at.
    "alg-none": (lambda idp: alg_none(idp), ALG),
    "alg-None": (lambda idp: alg_none(idp, "None"), ALG),
    "alg-nOnE": (lambda idp: alg_none(idp, "nOnE"), ALG),
    "alg-none-with-a-real-signature": (lambda idp: alg_none(idp, signature=mint(idp).rsplit(".", 1)[1]), ALG),
    "alg-empty": (lambda idp: alg_none(idp, ""), ALG),
    "hs256-secret-is-public-pem": (
        lambda idp: hs256({"alg": "HS256", "kid": idp.kid}, keycloak_payload(idp.issuer, "alice"), public_pem(idp)),
        ALG),
    "hs256-secret-is-public-jwk": (
        lambda idp: hs256({"alg": "HS256", "kid": idp.kid}, keycloak_payload(idp.issuer, "alice"),
                          json.dumps(signing_jwk(idp)).encode()),
        ALG),
    "hs256-secret-is-modulus": (
        lambda idp: hs256({"alg": "HS256", "kid": idp.kid}, keycloak_payload(idp.issuer, "alice"),
                          b64url_decode(signing_jwk(idp)["n"])),
        ALG),
    # Critical extensions we cannot honour (RFC 7515 §4.1.11).
    "crit-exp": (lambda idp: mint(idp, header={"crit": ["exp"]}), CRIT),
    "crit-unknown-extension": (lambda idp: mint(idp, header={"crit": ["urn:x"], "urn:x": True}), CRIT),
    "crit-empty-list": (lambda idp: mint(idp, header={"crit": []}), CRIT),
    # kid is only ever compared with the JWKS' kids: never a path, a query, or a lookup key elsewhere.
    "kid-path-traversal": (lambda idp: mint(idp, header={"kid": "../../../../../../etc/passwd"}), KID),
    "kid-sql-injection": (lambda idp: mint(idp, header={"kid": "' OR '1'='1' --"}), KID),
    "kid-8kb": (lambda idp: mint(idp, header={"kid": "k" * 8192}), KID),
    "kid-nul-and-newline": (lambda idp: mint(idp, header={"kid": "\u0000\r\nx-user: admin"}), KID),
    "kid-prefix-of-real-kid": (lambda idp: mint(idp, header={"kid": idp.kid[:-1]}), KID),
    "kid-not-a-string": (lambda idp: mint(idp, header={"kid": 5}), JSON),
    # Duplicate members: refused outright (a parser differential with the upstream would be a bypass).
    "duplicate-alg-in-header": (
        lambda idp: signed_raw(idp, with_duplicate(header_json(idp), "alg", "none"), payload_json(idp)), DUPLICATE),
    "duplicate-kid-in-header": (
        lambda idp: signed_raw(idp, with_duplicate(header_json(idp), "kid", "other"), payload_json(idp)), DUPLICATE),
    "duplicate-iss-in-payload": (
        lambda idp: signed_raw(idp, header_json(idp), with_duplicate(payload_json(idp), "iss", "https://evil")),
        DUPLICATE),
    "duplicate-sub-escaped": (
        lambda idp: signed_raw(idp, header_json(idp), '{"\\u0073ub":"admin",' + payload_json(idp)[1:]), DUPLICATE),
    "duplicate-realm-access": (
        lambda idp: signed_raw(idp, header_json(idp), payload_json(idp)[:-1] + ',"realm_access":{"roles":["admin"]}}'),
        DUPLICATE),
    # Payloads that are not claim sets.
    "payload-string": (lambda idp: signed_raw(idp, header_json(idp), '"bob"'), JSON),
    "payload-number": (lambda idp: signed_raw(idp, header_json(idp), "42"), JSON),
    "payload-null": (lambda idp: signed_raw(idp, header_json(idp), "null"), JSON),
    "payload-array": (lambda idp: signed_raw(idp, header_json(idp), f"[{payload_json(idp)}]"), JSON),
    "payload-empty": (lambda idp: signed_raw(idp, header_json(idp), ""), JSON),
    "payload-trailing-garbage": (lambda idp: signed_raw(idp, header_json(idp), payload_json(idp) + "x"), JSON),
    # exp of the wrong type or out of range.
    "exp-string": (lambda idp: mint(idp, exp=str(int(time.time()) + 300)), JSON),
    # RFC 7519 NumericDate may have a fraction: a fractional exp in the future is valid (see below).
    "exp-float-past": (lambda idp: mint(idp, exp=time.time() - 120.5), "Jwt is expired"),
    "exp-beyond-i64": (lambda idp: mint(idp, exp=2**64), JSON),
    "exp-negative": (lambda idp: mint(idp, exp=-1), "Jwt is expired"),
    "exp-boolean": (lambda idp: mint(idp, exp=True), JSON),
    # Nesting: 10,000 levels is far over the size limit already; 200 levels fit and hit the depth limit.
    "nested-10000-levels": (
        lambda idp: signed_raw(idp, header_json(idp), payload_json(idp)[:-1] + f',"n":{nested(10_000)}}}'), TOO_LARGE),
    "nested-200-levels": (lambda idp: signed_raw(idp, header_json(idp), payload_json(idp)[:-1] + f',"n":{nested(200)}}}'),
                          TOO_DEEP),
    "header-nested-200-levels": (
        lambda idp: signed_raw(idp, header_json(idp)[:-1] + f',"x":{nested(200)}}}', payload_json(idp)), TOO_DEEP),
    "token-20kb": (lambda idp: mint(idp, claims={"pad": "x" * 20_000}), TOO_LARGE),
    # Encoding tricks.
    "signature-padded": (lambda idp: mint(idp) + "==", BASE64),
    "payload-padded": (lambda idp: ".".join(p + ("==" if i == 1 else "") for i, p in enumerate(mint(idp).split("."))),
                       BASE64),
    "standard-base64-alphabet": (lambda idp: mint(idp).replace("-", "+").replace("_", "/") + "+/", BASE64),
    "whitespace-inside-token": (lambda idp: mint(idp).replace(".", ". ", 1), BASE64),
    "empty-segments": (lambda idp: "..", JSON),
    "non-ascii-token": (lambda idp: mint(idp) + "\u00e9", BASE64),
}


@pytest.mark.parametrize("case", list(ATTACKS))
def test_attack_is_rejected_and_envoy_keeps_serving(guarded, idp, case):
    make_token, message = ATTACKS[case]
    token = make_token(idp)
    for path in (PROTECTED, "/healthz"):
        expect_rejected(guarded, guarded.get(path, {"Authorization": f"Bearer {token}".encode("utf-8").decode("latin-1")}),
                        path, message)


def test_fractional_exp_in_the_future_is_valid(guarded, idp):
    expect_allowed(guarded.get(PROTECTED, bearer(mint(idp, "bob", exp=time.time() + 300.5))))


@pytest.mark.parametrize("header", ["jku", "x5u"])
def test_key_url_headers_are_never_followed(guarded, idp, attacker, header):
    """A token signed by the attacker, pointing at the attacker's key set: refused, and nobody fetched it."""
    before = attacker.hits()
    forged = mint(attacker, "alice", iss=idp.issuer, header={header: attacker.jwks_uri})
    expect_rejected(guarded, guarded.get(ADMIN, bearer(forged)), ADMIN, KID)
    same_kid = mint(attacker, "alice", iss=idp.issuer, header={header: attacker.jwks_uri, "kid": idp.kid})
    expect_rejected(guarded, guarded.get(ADMIN, bearer(same_kid)), ADMIN, VERIFY)
    time.sleep(0.5)
    assert attacker.hits() == before


def test_embedded_jwk_and_x5c_are_ignored(guarded, idp, attacker):
    jwk = signing_jwk(attacker)
    forged = mint(attacker, "alice", iss=idp.issuer, header={"jwk": jwk, "kid": idp.kid, "x5c": ["MIIB"]})
    expect_rejected(guarded, guarded.get(ADMIN, bearer(forged)), ADMIN, VERIFY)


def test_a_100kb_token_is_stopped_by_envoys_header_limit(guarded, idp):
    """Envoy's own 60 KiB request-header limit answers 431 before the filter sees the request."""
    token = mint(idp, claims={"pad": "x" * 100_000})
    assert guarded.get(PROTECTED, bearer(token))[0] == 431
    assert guarded.get(f"{PROTECTED}?access_token={token}")[0] == 431


def test_a_large_token_in_the_query_is_401(guarded, idp):
    token = mint(idp, claims={"pad": "x" * 20_000})
    expect_rejected(guarded, guarded.get(f"{PROTECTED}?access_token={token}"), PROTECTED, TOO_LARGE)


# --- Several tokens ------------------------------------------------------------------------------------

def get_with_headers(envoy, path, pairs):
    """GET with headers given as (name, value) pairs, repeated names kept as separate lines."""
    connection = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in pairs:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        connection.close()


def test_header_and_query_tokens_the_header_one_is_the_identity(guarded, idp):
    """The query cannot lend privileges to the header's identity, nor hide an invalid header token."""
    bob, alice = mint(idp, "bob"), mint(idp, "alice")
    # alice is admin, bob is not: bob's header with alice's query token stays bob.
    expect_forbidden(guarded, guarded.get(f"{ADMIN}?access_token={alice}", bearer(bob)), ADMIN)
    assert expect_allowed(guarded.get(f"{ADMIN}?access_token={bob}", bearer(alice)))["headers"]["x-user"] == "alice"
    expired = mint(idp, "alice", exp=int(time.time()) - 600)
    expect_rejected(guarded, guarded.get(f"{PROTECTED}?access_token={bob}", bearer(expired)), PROTECTED,
                    "Jwt is expired")
    expect_rejected(guarded, guarded.get(f"{PROTECTED}?access_token={alg_none(idp)}", bearer(bob)), PROTECTED, ALG)
    # Two query parameters of the same name: both are checked.
    expect_rejected(guarded, guarded.get(f"{PROTECTED}?access_token={bob}&access_token=x.y.z"), PROTECTED, BASE64)


@pytest.mark.parametrize("second", ["garbage", "alice", "bob"])
def test_two_authorization_headers(guarded, idp, second):
    """Envoy folds repeated Authorization headers into one comma-joined value: that is not a token,
    so even two valid tokens are refused rather than one of them being picked."""
    second_value = "garbage" if second == "garbage" else mint(idp, second)
    for path in (PROTECTED, ADMIN, "/healthz"):
        status, headers, body = get_with_headers(guarded, path, [("Authorization", f"Bearer {mint(idp, 'bob')}"),
                                                                 ("Authorization", f"Bearer {second_value}")])
        # "<token>,Bearer <token>" has five dots; "<token>,Bearer garbage" has two.
        assert (status, body) == (401, BASE64 if second == "garbage" else FORM)
        assert 'error="invalid_token"' in headers["www-authenticate"]


@pytest.mark.parametrize("value", ["Bearer  {t}", "Bearer {t}  ", "  bearer {t}", "BEARER\t{t}"])
def test_spacing_and_case_of_the_scheme(guarded, idp, value):
    token = mint(idp, "bob")
    response = guarded.get(PROTECTED, {"Authorization": value.format(t=token)})
    if "\t" in value:
        # Not `Bearer ` followed by a token: no token at all, so no identity (never a bypass).
        assert response[0] == 401 and response[2] == "Jwt is missing"
    else:
        expect_allowed(response)


def test_tokens_of_two_issuers_in_two_headers(idp, attacker, backend):
    """A second trusted issuer is accepted only where it is configured, and the first token is the identity."""
    partner = jwt_rule(attacker, jwksCluster="attacker", fromHeaders=[{"name": "x-partner-token"}],
                       outputClaimToHeaders=[{"header": "x-partner", "claim": "preferred_username"}])
    config = {"jwtRules": [jwt_rule(idp, fromHeaders=[{"name": "Authorization", "prefix": "Bearer "}]), partner],
              "policies": shop_policies()}
    with start_envoy(config, backend=backend, idp=idp, clusters={"attacker": attacker.port}) as envoy:
        bob, partner_alice = mint(idp, "bob"), mint(attacker, "alice")
        both = envoy.get(ADMIN, {**bearer(bob), "x-partner-token": partner_alice})
        expect_forbidden(envoy, both, ADMIN)
        echo = expect_allowed(envoy.get(PROTECTED, {**bearer(bob), "x-partner-token": partner_alice}))
        assert echo["headers"]["x-user"] == "bob"
        expect_rejected(envoy, envoy.get(PROTECTED, bearer(partner_alice)), PROTECTED, ISSUER)
        expect_rejected(envoy, envoy.get(PROTECTED, {"x-partner-token": bob}), PROTECTED, ISSUER)
        forged = mint(attacker, "alice", iss=idp.issuer, header={"kid": idp.kid})
        expect_rejected(envoy, envoy.get(PROTECTED, {**bearer(forged), "x-partner-token": partner_alice}),
                        PROTECTED, VERIFY)
        assert envoy.exit_code is None


def test_two_tokens_while_keys_are_being_fetched(idp, backend):
    """The CVE-2025-64527 situation (Envoy's jwt_authn crashed on several tokens with a remote JWKS):
    requests with tokens in two places park while the keys are fetched, then get the right answer;
    a client that hangs up while parked does not disturb the others."""
    idp.certs_mode(delay=1.5)
    with start_envoy(shop_config(idp), backend=backend, idp=idp) as envoy:
        bob, alice = mint(idp, "bob"), mint(idp, "alice")
        abandoned = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=0.2)
        abandoned.request("GET", f"{ADMIN}?access_token={alice}", headers=bearer(bob))
        with pytest.raises(OSError):
            abandoned.getresponse()
        abandoned.close()
        expect_forbidden(envoy, envoy.get(f"{ADMIN}?access_token={alice}", bearer(bob)), ADMIN)
        expect_rejected(envoy, envoy.get(f"{PROTECTED}?access_token=x.y.z", bearer(bob)), PROTECTED, BASE64)
    idp.certs_mode(status=500)
    with start_envoy(shop_config(idp), backend=backend, idp=idp) as envoy:
        expect_rejected(envoy, envoy.get(f"{PROTECTED}?access_token={mint(idp)}", bearer(mint(idp))), PROTECTED, FETCH)
        assert envoy.exit_code is None and envoy.get("/healthz")[0] == 200


# --- Configured limits -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def limited(idp, backend):
    config = {**shop_config(idp), "limits": {"maxTokenBytes": 65536, "maxClaimDepth": 6}}
    with start_envoy(config, backend=backend, idp=idp) as envoy:
        yield envoy


def test_raised_token_limit_lets_the_depth_limit_answer(limited, idp):
    deep = signed_raw(idp, header_json(idp), payload_json(idp)[:-1] + f',"n":{nested(10_000)}}}')
    assert 20_000 < len(deep) < 50_000
    expect_rejected(limited, limited.get(PROTECTED, bearer(deep)), PROTECTED, TOO_DEEP)
    big = mint(idp, "bob", claims={"pad": "x" * 20_000})
    assert expect_allowed(limited.get(PROTECTED, bearer(big)))["headers"]["x-user"] == "bob"


def test_claim_depth_limit_is_exact(limited, idp):
    # The payload is depth 1, so {"a": {"b": {"c": {"d": [[1]]}}}} reaches depth 6 at the inner array.
    at_limit = mint(idp, "bob", claims={"a": {"b": {"c": {"d": [[1]]}}}})
    expect_allowed(limited.get(PROTECTED, bearer(at_limit)))
    over = mint(idp, "bob", claims={"a": {"b": {"c": {"d": [[[1]]]}}}})
    expect_rejected(limited, limited.get(PROTECTED, bearer(over)), PROTECTED, TOO_DEEP)


def test_jwks_over_the_size_limit_is_refused(idp, backend):
    config = {**shop_config(idp), "limits": {"maxJwksBytes": 1024}}
    # The real key set, padded past the limit (still a valid document).
    idp.certs_mode(body=idp.certs_text() + " " * 1024)
    with start_envoy(config, backend=backend, idp=idp) as envoy:
        expect_rejected(envoy, envoy.get(PROTECTED, bearer(mint(idp))), PROTECTED, FETCH)
        deadline = time.monotonic() + 5
        while "exceeds the 1024-byte limit" not in envoy.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "exceeds the 1024-byte limit" in envoy.log_text()


# --- Fail closed ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("limits, fragments", [
    ({"maxClaimDepth": 1000}, ["limits.maxClaimDepth", "outside 2..=64"]),
    ({"maxTokenBytes": "big"}, ["limits.maxTokenBytes", "invalid type"]),
    ({"maxJwksBytes": 0}, ["limits.maxJwksBytes"]),
], ids=["depth-out-of-range", "size-not-a-number", "jwks-zero"])
def test_invalid_limits_are_refused(idp, backend, limits, fragments):
    """Valid JSON that on_configure rejects: the same fail-closed path as any invalid configuration."""
    with start_envoy({**shop_config(idp), "limits": limits}, backend=backend, expect_failure=True) as envoy:
        expect_refused(envoy, fragments)


def test_a_module_that_cannot_load_serves_nothing(backend, tmp_path):
    """fail_open is false: a broken Wasm module never turns into a pass-through filter."""
    broken = tmp_path / "broken.wasm"
    broken.write_bytes(b"\0asm\x01\0\0\0" + b"\xff" * 64)
    with start_envoy({"policies": [{"name": "p", "rules": [{}]}]}, backend=backend, wasm_path=broken, expect_failure=True) as envoy:
        if envoy.exit_code is None and envoy.port is not None:
            assert envoy.get("/healthz")[0] >= 500
        else:
            assert envoy.exit_code not in (None, 0)


def test_a_filter_that_traps_at_request_time_denies(backend, tmp_path):
    """fail_open false: when the VM traps mid-request, Envoy answers with an error and never forwards
    the request, then or afterwards."""
    module = tmp_path / "trap.wasm"
    module.write_bytes(trapping_module())
    with start_envoy({"policies": [{"name": "p", "rules": [{}]}]}, backend=backend, wasm_path=module) as envoy:
        for _ in range(3):
            status, headers, _ = envoy.get("/healthz")
            assert (status, headers.get("x-backend")) == (503, None), (status, headers)
        deadline = time.monotonic() + 5
        while "proxy_on_request_headers failed" not in envoy.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "proxy_on_request_headers failed: Uncaught RuntimeError: unreachable" in envoy.log_text()
        assert envoy.exit_code is None
