"""Every JWS algorithm the filter verifies, in real Envoy, with each `signatureBackend` (`auto`:
Envoy's verify_signature where the host has the algorithm; `vm`: everything inside the VM), which
must decide alike: RS256/384/512, PS256/384/512, ES256/384/512 and EdDSA (Ed25519).

The keys are served over HTTP by the test bed's JWKS server and made, like the tokens, with
`cryptography` (testbed.keys, testbed.tokens). For each algorithm: a valid token passes; an altered,
truncated, extended, empty or foreign signature is jwt_signature_invalid; an algorithm swapped in
the header finds no key when the key is of another family or curve (jwks_kid_not_found) and fails
the signature when it is of the same family; `none`, HMAC and unknown names are
jwt_alg_not_allowed. Then the key rules (a JWK's `alg` binds it, `use` other than `sig`, points off
the curve, other curves and key types, RSA sizes outside 2048-4096 bits: such keys are skipped),
the per-issuer `algorithms` allow-list, the configuration refusals, the configure log line and
gauge, and the same tokens through Envoy's native jwt_authn (the differential section at the end).
Every denial is checked by its message and by the reason code of its log line."""

import hashlib
import hmac
import json
import re
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, padding, x25519

from testbed.config import principals
from testbed.envoy import start_envoy
from testbed.expect import (FORM, REASON_MESSAGES, VERIFY, bearer, expect_allowed, expect_denied_for,
                            expect_refused)
from testbed.istio import native_filters
from testbed.keys import ALGORITHMS, CURVES, family, generate, jwk, public_key_from_jwk, signing_key
from testbed.services import serve_jwks
from testbed.tokens import b64url, b64url_decode, ecdsa_size, hash_for, json_segment, jws, mint_as, raw_to_der

MAIN = "https://main.algorithms.example"  # one key per algorithm, kid = the algorithm's name
RULES = "https://rules.algorithms.example"  # keys that test the key rules (rule_keys)
LISTED = "https://listed.algorithms.example"  # MAIN's keys inline, with an `algorithms` allow-list
UNUSABLE = "https://unusable.algorithms.example"  # a key set whose only key is off its curve
ALLOW_LIST = ["ES256", "EdDSA"]

SIGNATURE = "jwt_signature_invalid"
NO_KEY = "jwks_kid_not_found"
NOT_ALLOWED = "jwt_alg_not_allowed"
ALLOWED = "allowed"

HOST_CRYPTO_GAUGE = "wasmcustom.jwt_authz.host_crypto_algorithms"


# --- Keys --------------------------------------------------------------------------------------------

def main_jwks():
    """A key per algorithm, kid = its name, without `alg`; `use: sig` on the EC and OKP keys only
    (`use` is optional)."""
    return {"keys": [jwk(signing_key(alg), kid=alg, use="sig" if family(alg) != "RSA" else None)
                     for alg in ALGORITHMS]}


# Field primes of the NIST curves, to move a point off its curve.
PRIMES = {
    "ES256": 2**256 - 2**224 + 2**192 + 2**96 - 1,
    "ES384": 2**384 - 2**128 - 2**96 + 2**32 - 1,
    "ES512": 2**521 - 1,
}


def off_curve(alg):
    """The JWK of alg's key with y changed by one: (x, y±1) is on the curve only if y = (p-1)/2."""
    document = jwk(signing_key(alg), kid=f"off-curve-{alg}")
    size = CURVES[alg][2]
    y = int.from_bytes(b64url_decode(document["y"]), "big")
    document["y"] = b64url((y + 1 if y + 1 < PRIMES[alg] else y - 1).to_bytes(size, "big"))
    return document


def raw_public(key):
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def secp256k1_jwk(key, kid):
    numbers = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "secp256k1", "kid": kid,
            "x": b64url(numbers.x.to_bytes(32, "big")), "y": b64url(numbers.y.to_bytes(32, "big"))}


def rule_keys():
    """kid -> (private key, JWK, usable by the rules): what RULES publishes."""
    bound = {alg: generate(alg) for alg in ("ES256", "RS384", "RS256", "PS512", "EdDSA")}
    other = {"p384": generate("ES384"), "k1": ec.generate_private_key(ec.SECP256K1()),
             "ed448": ed448.Ed448PrivateKey.generate(), "x25519": x25519.X25519PrivateKey.generate(),
             "rsa1024": generate("RS256", 1024), "rsa2047": generate("RS256", 2047),
             "rsa4096": generate("RS256", 4096), "rsa4104": generate("RS256", 4104)}
    keys = {f"bound-{alg}": (key, jwk(key, kid=f"bound-{alg}", alg=alg), True) for alg, key in bound.items()}
    keys.update({
        "enc-ES256": (signing_key("ES256"), jwk(signing_key("ES256"), kid="enc-ES256", use="enc"), False),
        "enc-RSA": (signing_key("RS256"), jwk(signing_key("RS256"), kid="enc-RSA", use="enc"), False),
        "enc-EdDSA": (signing_key("EdDSA"), jwk(signing_key("EdDSA"), kid="enc-EdDSA", use="enc"), False),
        **{f"off-curve-{alg}": (signing_key(alg), off_curve(alg), False) for alg in CURVES},
        # A P-384 point labelled P-256: its coordinates do not even fit the field.
        "p384-as-p256": (other["p384"], jwk(other["p384"], kid="p384-as-p256", crv="P-256"), False),
        "secp256k1": (other["k1"], secp256k1_jwk(other["k1"], "secp256k1"), False),
        "Ed448": (other["ed448"], {"kty": "OKP", "crv": "Ed448", "kid": "Ed448", "x": b64url(raw_public(other["ed448"]))},
                  False),
        "X25519": (other["x25519"], {"kty": "OKP", "crv": "X25519", "kid": "X25519",
                                     "x": b64url(raw_public(other["x25519"]))}, False),
        "rsa-1024": (other["rsa1024"], jwk(other["rsa1024"], kid="rsa-1024"), False),
        "rsa-2047": (other["rsa2047"], jwk(other["rsa2047"], kid="rsa-2047"), False),
        "rsa-4096": (other["rsa4096"], jwk(other["rsa4096"], kid="rsa-4096"), True),
        "rsa-4104": (other["rsa4104"], jwk(other["rsa4104"], kid="rsa-4104"), False),
    })
    return keys


@pytest.fixture(scope="module")
def rules_keys():
    keys = rule_keys()
    # The broken keys are really broken: cryptography refuses them too.
    for kid in ["p384-as-p256", *(f"off-curve-{alg}" for alg in CURVES)]:
        with pytest.raises(ValueError):
            public_key_from_jwk(keys[kid][1])
    assert keys["rsa-2047"][0].key_size == 2047 and keys["rsa-4104"][0].key_size == 4104
    return keys


@pytest.fixture(scope="module")
def servers(tmp_path_factory, rules_keys):
    """The JWKS servers: MAIN's, RULES' and UNUSABLE's key sets over HTTP."""
    documents = {
        "main": main_jwks(),
        "rules": {"keys": [document for _, document, _ in rules_keys.values()]},
        "unusable": {"keys": [off_curve("ES256")]},
    }
    with serve_jwks(tmp_path_factory.mktemp("jwks-main"), documents["main"]) as main, \
            serve_jwks(tmp_path_factory.mktemp("jwks-rules"), documents["rules"]) as rules, \
            serve_jwks(tmp_path_factory.mktemp("jwks-unusable"), documents["unusable"]) as unusable:
        yield {"main": main, "rules": rules, "unusable": unusable}


def jwt_rule(issuer, server=None, cluster=None, **more):
    rule = {"issuer": issuer, "audiences": ["shop"],
            "outputClaimToHeaders": [{"header": "x-user", "claim": "preferred_username"}], **more}
    if server is not None:
        rule.update(jwksUri=server.jwks_uri, jwksCluster=cluster)
    return rule


AUTHENTICATED = [{"name": "authenticated", "action": "ALLOW", "rules": [{"from": [principals("*")]}]}]


def plugin_config(servers, signature_backend):
    config = {
        "jwtRules": [
            jwt_rule(MAIN, servers["main"], "jwks-main"),
            jwt_rule(RULES, servers["rules"], "jwks-rules"),
            jwt_rule(LISTED, jwks=json.dumps(main_jwks()), algorithms=ALLOW_LIST),
            jwt_rule(UNUSABLE, servers["unusable"], "jwks-unusable"),
        ],
        "policies": AUTHENTICATED,
    }
    if signature_backend is not None:
        config["signatureBackend"] = signature_backend
    return config


def jwks_clusters(servers):
    return {f"jwks-{name}": server.port for name, server in servers.items()}


WORKERS = 2
LOG_FLUSH_MS = 10  # every denial's log line is read: the default 50 ms would double this file's time


@pytest.fixture(scope="module", params=["auto", "vm"])
def envoy(request, backend, servers):
    """jwt-authz in Envoy with signatureBackend auto, then vm: every test below runs against both.
    Two workers: the one that did not fetch a key set uses the keys the other shared."""
    with start_envoy(plugin_config(servers, request.param), backend=backend, clusters=jwks_clusters(servers),
                     concurrency=WORKERS, log_flush_ms=LOG_FLUSH_MS) as proxy:
        proxy.signature_backend = request.param
        yield proxy


def check(envoy, path, token, expected):
    """Send token for path (a path of its own: the denial's log line is found by it)."""
    response = envoy.get(path, bearer(token))
    if expected == ALLOWED:
        assert expect_allowed(response)["headers"]["x-user"] == "alice"
    else:
        expect_denied_for(envoy, response, path, expected)


# --- Token variants ----------------------------------------------------------------------------------

def token(alg, key_alg=None, *, issuer=MAIN, key=None, sign_as=None, **options):
    """A token with alg in its header and the kid of key_alg's MAIN key (alg's by default), signed
    with that key (or key) by sign_as (default alg)."""
    key_alg = key_alg or alg
    return mint_as(alg, key or signing_key(key_alg), issuer, kid=key_alg, sign_as=sign_as, **options)


def segments(text):
    header, payload, signature = text.split(".")
    return header, payload, b64url_decode(signature)


def with_signature(text, signature):
    header, payload, _ = text.split(".")
    return f"{header}.{payload}.{b64url(signature)}"


def resigned(alg, change):
    """A valid alg token with its signature replaced by change(signature)."""
    text = token(alg)
    return with_signature(text, change(segments(text)[2]))


def edited(text, part, **changes):
    """The token with members of its header or payload changed, and its signature kept."""
    header, payload, signature = text.split(".")
    index = {"header": 0, "payload": 1}[part]
    document = json.loads(b64url_decode([header, payload][index]))
    document.update(changes)
    pieces = [header, payload, signature]
    pieces[index] = json_segment(document)
    return ".".join(pieces)


def public_pem(alg):
    return signing_key(alg).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def hmac_token(alg, hmac_alg, secret):
    """An HMAC token (HS256/384/512) with the kid of alg's key, keyed with secret (e.g. that key's
    public PEM, the classic algorithm-confusion attack)."""
    header = {"alg": hmac_alg, "typ": "JWT", "kid": alg}
    signing_input = f"{json_segment(header)}.{segments(token(alg))[1]}"
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[hmac_alg]
    return f"{signing_input}.{b64url(hmac.new(secret, signing_input.encode(), digest).digest())}"


def alg_none(alg, signed=False):
    real = token(alg)
    unsigned = edited(real, "header", alg="none")
    return unsigned if signed else with_signature(unsigned, b"")


def ecdsa_with_short_r(alg):
    """A valid alg token whose r has a leading zero byte (so its padding matters): P-256/P-384 sign
    about one in 256 like that, P-521 about one in two."""
    for attempt in range(20_000):
        candidate = token(alg, jti=f"short-r-{attempt}")
        if segments(candidate)[2][0] == 0:
            return candidate
    raise AssertionError("no signature with a short r")


def without_r_padding(text, alg):
    signature = segments(text)[2]
    size = ecdsa_size(signing_key(alg))
    assert signature[0] == 0
    return with_signature(text, signature[1:size] + signature[size:])


def swapped_r_and_s(text, alg):
    signature = segments(text)[2]
    size = ecdsa_size(signing_key(alg))
    return with_signature(text, signature[size:] + signature[:size])


# Orders of the NIST curves' base points.
ORDERS = {
    "ES256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "ES384": 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
    "ES512": 0x1FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409,
}


def ecdsa_other_s(alg):
    """A valid alg token with s replaced by n - s: the other valid signature of the same message
    (RFC 7518 §3.4 does not ask for the low one; jwt_authn takes both). cryptography checks it."""
    text = token(alg)
    header, payload, signature = segments(text)
    size = ecdsa_size(signing_key(alg))
    s = int.from_bytes(signature[size:], "big")
    other = signature[:size] + (ORDERS[alg] - s).to_bytes(size, "big")
    signing_key(alg).public_key().verify(raw_to_der(other), f"{header}.{payload}".encode(), ec.ECDSA(hash_for(alg)))
    return with_signature(text, other)


def pss_token(alg, **options):
    """A PS* token whose PSS differs from RFC 7518 §3.5 as options say."""
    return jws({"alg": alg, "typ": "JWT", "kid": alg}, json.loads(b64url_decode(segments(token(alg))[1])),
               signing_key(alg), **options)


def pss_mgf1_sha1(alg):
    """A PS* token whose MGF1 uses SHA-1 instead of the algorithm's hash."""
    text = token(alg)
    header, payload, _ = text.split(".")
    digest = hash_for(alg)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA1()), salt_length=digest.digest_size)
    return with_signature(text, signing_key(alg).sign(f"{header}.{payload}".encode(), pss, digest))


ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493


def eddsa_s_plus_order(text):
    """The same Ed25519 signature with S + L for S: equal modulo L, but RFC 8032 §5.1.7 requires S < L."""
    signature = segments(text)[2]
    s = int.from_bytes(signature[32:], "little") + ED25519_ORDER
    return with_signature(text, signature[:32] + s.to_bytes(32, "little"))


# name -> (algorithms it applies to, token maker(alg), expected)
EVERY = set(ALGORITHMS)
RSA_ALGS = {alg for alg in ALGORITHMS if family(alg) == "RSA"}
PS_ALGS = {alg for alg in ALGORITHMS if alg.startswith("PS")}
EC_ALGS = set(CURVES)
CASES = {
    "valid": (EVERY, lambda alg: token(alg), ALLOWED),
    "payload-tampered": (EVERY, lambda alg: edited(token(alg), "payload", preferred_username="mallory"), SIGNATURE),
    "header-tampered": (EVERY, lambda alg: edited(token(alg), "header", typ="at+jwt"), SIGNATURE),
    "wrong-key": (EVERY, lambda alg: token(alg, key=signing_key(alg, 1)), SIGNATURE),
    # Without a kid every key of the header's family (and curve) is a candidate.
    "no-kid": (EVERY, lambda alg: mint_as(alg, signing_key(alg), MAIN), ALLOWED),
    "no-kid-wrong-key": (EVERY, lambda alg: mint_as(alg, signing_key(alg, 1), MAIN), SIGNATURE),
    "signature-truncated": (EVERY, lambda alg: resigned(alg, lambda signature: signature[:-1]), SIGNATURE),
    "signature-extended": (EVERY, lambda alg: resigned(alg, lambda signature: signature + b"\0"), SIGNATURE),
    "signature-empty": (EVERY, lambda alg: resigned(alg, lambda signature: b""), SIGNATURE),
    "signature-zeros": (EVERY, lambda alg: resigned(alg, lambda signature: bytes(len(signature))), SIGNATURE),
    "alg-none": (EVERY, lambda alg: alg_none(alg), NOT_ALLOWED),
    "alg-none-signed": (EVERY, lambda alg: alg_none(alg, signed=True), NOT_ALLOWED),
    "alg-lowercase": (EVERY, lambda alg: token(alg.lower(), alg, sign_as=alg), NOT_ALLOWED),
    "hs256-public-pem": (EVERY, lambda alg: hmac_token(alg, "HS256", public_pem(alg)), NOT_ALLOWED),
    "hs384-public-pem": (RSA_ALGS, lambda alg: hmac_token(alg, "HS384", public_pem(alg)), NOT_ALLOWED),
    "hs512-public-pem": (RSA_ALGS, lambda alg: hmac_token(alg, "HS512", public_pem(alg)), NOT_ALLOWED),
    "hs256-modulus": (RSA_ALGS, lambda alg: hmac_token(alg, "HS256", b64url_decode(jwk(signing_key(alg))["n"])),
                      NOT_ALLOWED),
    "hs256-jwk-x": (EC_ALGS | {"EdDSA"}, lambda alg: hmac_token(alg, "HS256", b64url_decode(jwk(signing_key(alg))["x"])),
                    NOT_ALLOWED),
    # The same valid r and s, DER-encoded (as cryptography and OpenSSL produce them) instead of r || s.
    "ecdsa-der": (EC_ALGS, lambda alg: resigned(alg, raw_to_der), SIGNATURE),
    "ecdsa-r-and-s-swapped": (EC_ALGS, lambda alg: swapped_r_and_s(token(alg), alg), SIGNATURE),
    "ecdsa-short-r-padded": (EC_ALGS, lambda alg: ecdsa_with_short_r(alg), ALLOWED),
    "ecdsa-short-r-unpadded": (EC_ALGS, lambda alg: without_r_padding(ecdsa_with_short_r(alg), alg), SIGNATURE),
    "ecdsa-other-s": (EC_ALGS, ecdsa_other_s, ALLOWED),
    "pss-salt-0": (PS_ALGS, lambda alg: pss_token(alg, pss_salt_length=0), SIGNATURE),
    "pss-mgf1-sha1": (PS_ALGS, pss_mgf1_sha1, SIGNATURE),
    "eddsa-s-not-reduced": ({"EdDSA"}, lambda alg: eddsa_s_plus_order(token(alg)), SIGNATURE),
}

# (key's algorithm, algorithm in the header, expected): the signature is the key's own algorithm's.
# Another family, or another curve, has no key for the header's algorithm; within RSA the key is a
# candidate (its JWK has no alg) and the signature fails.
SWAPS = [
    ("RS256", "PS256", SIGNATURE), ("PS256", "RS256", SIGNATURE), ("RS256", "RS384", SIGNATURE),
    ("RS384", "PS384", SIGNATURE), ("RS512", "RS256", SIGNATURE), ("PS384", "PS512", SIGNATURE),
    ("PS512", "RS512", SIGNATURE),
    ("ES256", "ES384", NO_KEY), ("ES384", "ES256", NO_KEY), ("ES384", "ES512", NO_KEY), ("ES512", "ES256", NO_KEY),
    ("ES256", "EdDSA", NO_KEY), ("ES256", "RS256", NO_KEY), ("ES512", "PS512", NO_KEY),
    ("EdDSA", "ES256", NO_KEY), ("EdDSA", "RS256", NO_KEY),
    ("RS256", "ES256", NO_KEY), ("PS256", "EdDSA", NO_KEY), ("RS512", "ES512", NO_KEY),
]

# An RSA JWK without alg verifies every RSA algorithm: these tokens are signed with the header's
# algorithm by another algorithm's key (key's algorithm, header's).
SAME_FAMILY = [("RS256", "PS384"), ("PS256", "RS512"), ("RS512", "PS256"), ("PS384", "RS256")]

# Names the filter does not verify (RFC 9864's fully-specified ones among them), each with the kid
# of the key that signed.
UNKNOWN_ALGS = [("ES256K", "ES256"), ("Ed25519", "EdDSA"), ("Ed448", "EdDSA"), ("RSA-OAEP", "RS256"),
                ("ES256 ", "ES256"), ("PS256+", "PS256"), ("", "RS256")]

ALG_CASES = [(alg, case) for case, (algs, _, _) in CASES.items() for alg in ALGORITHMS if alg in algs]


@pytest.mark.parametrize("alg, case", ALG_CASES, ids=[f"{alg}-{case}" for alg, case in ALG_CASES])
def test_algorithm(envoy, alg, case):
    _, make, expected = CASES[case]
    check(envoy, f"/alg/{alg}/{case}", make(alg), expected)


@pytest.mark.parametrize("key_alg, header_alg, expected", SWAPS, ids=[f"{k}-key-as-{h}" for k, h, _ in SWAPS])
def test_algorithm_swapped_in_the_header(envoy, key_alg, header_alg, expected):
    check(envoy, f"/swap/{key_alg}/{header_alg}", token(header_alg, key_alg, sign_as=key_alg), expected)


@pytest.mark.parametrize("key_alg, header_alg", SAME_FAMILY, ids=[f"{k}-key-signs-{h}" for k, h in SAME_FAMILY])
def test_rsa_key_without_alg_verifies_every_rsa_algorithm(envoy, key_alg, header_alg):
    check(envoy, f"/same-family/{key_alg}/{header_alg}", token(header_alg, key_alg), ALLOWED)


@pytest.mark.parametrize("alg, key_alg", UNKNOWN_ALGS, ids=[repr(alg) for alg, _ in UNKNOWN_ALGS])
def test_unknown_algorithm_is_not_allowed(envoy, alg, key_alg):
    check(envoy, f"/unknown-alg/{b64url(alg) or 'empty'}", token(alg, key_alg, sign_as=key_alg), NOT_ALLOWED)


# --- Key rules (RULES' keys) ----------------------------------------------------------------------------

# (kid, algorithm in the header, expected); the token is signed by kid's key with that algorithm
# (the header's) unless a fourth element names another.
RULE_CASES = [
    ("bound-ES256", "ES256", ALLOWED),
    ("bound-RS384", "RS384", ALLOWED),
    ("bound-RS384", "RS256", NO_KEY),
    ("bound-RS384", "PS384", NO_KEY),
    ("bound-RS256", "RS256", ALLOWED),
    ("bound-RS256", "PS256", NO_KEY),
    ("bound-PS512", "PS512", ALLOWED),
    ("bound-PS512", "RS512", NO_KEY),
    ("bound-EdDSA", "EdDSA", ALLOWED),
    ("enc-ES256", "ES256", NO_KEY),
    ("enc-RSA", "RS256", NO_KEY),
    ("enc-EdDSA", "EdDSA", NO_KEY),
    ("off-curve-ES256", "ES256", NO_KEY),
    ("off-curve-ES384", "ES384", NO_KEY),
    ("off-curve-ES512", "ES512", NO_KEY),
    ("p384-as-p256", "ES256", NO_KEY),
    ("p384-as-p256", "ES384", NO_KEY),
    ("secp256k1", "ES256", NO_KEY),
    ("Ed448", "EdDSA", NO_KEY),
    ("X25519", "EdDSA", NO_KEY, "EdDSA-key"),
    ("rsa-1024", "RS256", NO_KEY),
    ("rsa-2047", "RS256", NO_KEY),
    ("rsa-4096", "RS512", ALLOWED),
    ("rsa-4096", "PS256", ALLOWED),
    ("rsa-4104", "RS256", NO_KEY),
]


@pytest.mark.parametrize("case", RULE_CASES, ids=[f"{c[0]}-{c[1]}" for c in RULE_CASES])
def test_key_rules(envoy, rules_keys, case):
    kid, alg, expected = case[:3]
    # An X25519 key cannot sign: its token is an Ed25519 signature by MAIN's EdDSA key.
    key = signing_key("EdDSA") if case[3:] == ("EdDSA-key",) else rules_keys[kid][0]
    text = mint_as(alg, key, RULES, kid=kid)
    check(envoy, f"/rules/{kid}/{alg}", text, expected)


def test_requests_reach_both_workers(envoy):
    """Every test here runs on whichever worker Envoy picks: both do decide (by the thread ids of the
    denial lines of 24 fresh connections)."""
    paths = [f"/workers/{index}" for index in range(24)]
    for path in paths:
        check(envoy, path, token("ES256", key=signing_key("ES256", 1)), SIGNATURE)
    threads = {re.search(r"^\[[^]]*\]\[(\d+)\]", line).group(1) for line in envoy.log_text().splitlines()
               if "denied 401" in line and any(line.endswith(path) for path in paths)}
    assert len(threads) == WORKERS, threads


def keys_in_use(envoy, issuer):
    tag = "".join(c if c.isalnum() or c in "-_" else "_" for c in issuer)
    name = f"wasmcustom.jwt_authz.issuer=.={tag};.;jwks_keys_in_use"
    return envoy.stats().get(name)


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_only_keys_the_rules_accept_are_in_use(envoy, rules_keys):
    """The keys-in-use gauges count the keys kept: all of MAIN's (fetched) and LISTED's (inline), and
    of RULES' only those the rules accept."""
    usable = sum(1 for _, _, ok in rules_keys.values() if ok)
    assert 0 < usable < len(rules_keys)
    for issuer in (MAIN, RULES):  # fetched on the first token
        envoy.get(f"/warm-up/{b64url(issuer)}", bearer(token("RS256", issuer=issuer)))
    expected = {MAIN: len(ALGORITHMS), LISTED: len(ALGORITHMS), RULES: usable}
    wait_for(lambda: all(keys_in_use(envoy, issuer) == count for issuer, count in expected.items()))
    assert {issuer: keys_in_use(envoy, issuer) for issuer in expected} == expected


def test_a_key_set_with_only_a_point_off_the_curve_is_unusable(envoy):
    path = "/unusable/ES256"
    response = envoy.get(path, bearer(mint_as("ES256", signing_key("ES256"), UNUSABLE, kid="off-curve-ES256")))
    expect_denied_for(envoy, response, path, "jwks_fetch_failed")
    assert wait_for(lambda: "jwks_no_usable_key" in envoy.log_text()), envoy.log_tail()


# --- The per-issuer allow-list --------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ALGORITHMS)
def test_algorithms_allow_list(envoy, alg):
    """LISTED has MAIN's keys and accepts ES256 and EdDSA only; the same tokens for MAIN pass (test_algorithm)."""
    check(envoy, f"/listed/{alg}", token(alg, issuer=LISTED), ALLOWED if alg in ALLOW_LIST else NOT_ALLOWED)


@pytest.mark.parametrize("alg", ALLOW_LIST)
def test_allow_listed_algorithms_are_still_verified(envoy, alg):
    check(envoy, f"/listed/{alg}/wrong-key", token(alg, issuer=LISTED, key=signing_key(alg, 1)), SIGNATURE)


# --- Configuration -----------------------------------------------------------------------------------

def host_crypto_algorithms(envoy):
    return envoy.stats().get(HOST_CRYPTO_GAUGE)


def configure_lines(envoy):
    return [line.split("signature verification:", 1)[1].strip()
            for line in envoy.log_text().splitlines() if "signature verification:" in line]


def check_lines(envoy):
    """The host checks each VM makes at its first token of an algorithm."""
    return [line.split("verify_signature check:", 1)[1].strip()
            for line in envoy.log_text().splitlines() if "verify_signature check:" in line]


def check_configure_report(envoy, signature_backend, path="/report"):
    lines = wait_for(lambda: configure_lines(envoy))
    assert lines, envoy.log_tail()
    assert len(set(lines)) == 1, lines  # every VM of one configuration says the same
    wait_for(lambda: host_crypto_algorithms(envoy) is not None)
    if signature_backend == "vm":
        assert host_crypto_algorithms(envoy) == 0
        for alg in ("RS256", "ES256"):
            check(envoy, f"{path}/{alg}", token(alg), ALLOWED)
        assert check_lines(envoy) == [], "nothing is checked with the host"
        assert host_crypto_algorithms(envoy) == 0
        return lines[0]
    assert "RS256" in lines[0] and "ES256" in lines[0] and "first token" in lines[0], lines
    # Each VM checks the host for an algorithm before its first token of it, then the host verifies
    # it (Envoy 1.40 has verify_signature for RSA PKCS#1 v1.5 and ECDSA); enough tokens reach both
    # workers.
    for i in range(4 * WORKERS):
        for alg in ("RS256", "ES256"):
            check(envoy, f"{path}/{alg}/{i}", token(alg), ALLOWED)
    checks = wait_for(lambda: check_lines(envoy))
    assert "RS256 passed; the host verifies it" in checks, (checks, envoy.log_tail())
    assert "ES256 passed; the host verifies it" in checks, checks
    assert not any("failed" in line for line in checks), checks
    # Checked once per VM (the main thread's VM serves no requests): at most one line per worker.
    assert checks.count("RS256 passed; the host verifies it") <= WORKERS, checks
    # Per VM, last writer wins: at least the algorithm that worker checked last.
    count = wait_for(lambda: host_crypto_algorithms(envoy))
    assert 1 <= count <= len(ALGORITHMS), count
    return lines[0]


def test_configure_log_line_and_host_crypto_gauge(envoy):
    check_configure_report(envoy, envoy.signature_backend)


def test_signature_backend_defaults_to_auto(backend, servers):
    with start_envoy(plugin_config(servers, None), backend=backend, clusters=jwks_clusters(servers)) as envoy:
        check_configure_report(envoy, "auto", "/default")
        check(envoy, "/default/ES256", token("ES256"), ALLOWED)
        check(envoy, "/default/EdDSA", token("EdDSA"), ALLOWED)


@pytest.mark.parametrize("changes, fragments", [
    ({"algorithms": ["ES256", "HS256"]}, ["jwtRules[0].algorithms[1]"]),
    ({"algorithms": ["RS256", "none"]}, ["jwtRules[0].algorithms[1]"]),
    ({"algorithms": ["EdDSA", "XX"]}, ["jwtRules[0].algorithms[1]"]),
    ({"algorithms": ["PS256", "es256"]}, ["jwtRules[0].algorithms[1]"]),
    ({"signatureBackend": "openssl"}, ["signatureBackend"]),
], ids=["HS256", "none", "unknown", "lowercase", "backend"])
def test_invalid_algorithm_settings_are_refused(backend, changes, fragments):
    rule = {"issuer": MAIN, "jwks": json.dumps(main_jwks())}
    config = {"jwtRules": [{**rule, **{k: v for k, v in changes.items() if k == "algorithms"}}], "policies": AUTHENTICATED}
    config.update({k: v for k, v in changes.items() if k != "algorithms"})
    with start_envoy(config, backend=backend, expect_failure=True) as envoy:
        expect_refused(envoy, fragments)


# --- Differential: the same tokens through Envoy's native jwt_authn --------------------------------------

@pytest.fixture(scope="module")
def native(backend, servers):
    """Envoy's jwt_authn and rbac as Istio configures them for MAIN (testbed.istio)."""
    config = {"jwtRules": [jwt_rule(MAIN, servers["main"], "jwks-main")], "policies": AUTHENTICATED}
    filters = native_filters(config, {servers["main"].jwks_uri: "jwks-main"})
    with start_envoy(None, backend=backend, filters=filters, clusters=jwks_clusters(servers)) as proxy:
        yield proxy


# Every MAIN token above: name -> (token maker, what the rules expect of jwt-authz).
DIFFERENTIAL = {
    **{f"{alg}-{case}": (lambda alg=alg, case=case: CASES[case][1](alg), CASES[case][2]) for alg, case in ALG_CASES},
    **{f"{k}-key-as-{h}": (lambda k=k, h=h: token(h, k, sign_as=k), expected) for k, h, expected in SWAPS},
    **{f"{k}-key-signs-{h}": (lambda k=k, h=h: token(h, k), ALLOWED) for k, h in SAME_FAMILY},
    **{f"alg-{b64url(alg) or 'empty'}": (lambda alg=alg, k=k: token(alg, k, sign_as=k), NOT_ALLOWED)
       for alg, k in UNKNOWN_ALGS},
}

# Both refuse, each for its own first reason: (jwt-authz's message, jwt_authn's).
NATIVE_ALG_UNSUPPORTED = "Jwt header [alg] is not supported"
NATIVE_ED25519_LENGTH = "Jwt ED25519 signature is wrong length"
DIFFERENT_REASONS = {
    # jwt_authn refuses an empty signature segment as malformed before it looks at alg or keys.
    (REASON_MESSAGES[SIGNATURE], FORM): "empty signature",
    (REASON_MESSAGES[NOT_ALLOWED], FORM): "alg none, empty signature",
    # jwt_authn's word for an alg it has no verifier for (none, unknown names); jwt-authz's is "not allowed".
    (REASON_MESSAGES[NOT_ALLOWED], NATIVE_ALG_UNSUPPORTED): "alg none signed, unknown names",
    # jwt_authn knows HMAC: it takes the key of the kid and fails to verify with it; jwt-authz refuses HMAC outright.
    (REASON_MESSAGES[NOT_ALLOWED], VERIFY): "HMAC with a public key as secret",
    (REASON_MESSAGES[NOT_ALLOWED], NATIVE_ED25519_LENGTH): "HMAC with the kid of an Ed25519 key",
    (REASON_MESSAGES[SIGNATURE], NATIVE_ED25519_LENGTH): "an Ed25519 signature of the wrong length",
    # jwt_authn takes the key of the kid whatever its curve and fails to verify; jwt-authz finds no
    # key of the header's family and curve.
    (REASON_MESSAGES[NO_KEY], VERIFY): "a key of another curve or family",
}

# Tokens the rules refuse and jwt_authn (Envoy 1.40) accepts:
NATIVE_ACCEPTS = {
    # its ECDSA check reads r and s from the two halves of the first 2 x size bytes: a byte appended
    # to a valid r || s is ignored;
    "ES256-signature-extended", "ES384-signature-extended", "ES512-signature-extended",
    # it verifies with the kid's key by that key's own type, whatever family the header's alg names
    # (the header picks only the hash): an ES256 or Ed25519 signature passes as RS256, ES256 or EdDSA.
    "ES256-key-as-EdDSA", "ES256-key-as-RS256", "EdDSA-key-as-ES256", "EdDSA-key-as-RS256",
}


def decide(proxy, path, text):
    status, headers, body = proxy.get(path, bearer(text))
    if status == 200:
        assert headers.get("x-backend") == "demo", (status, headers, body)
    return status, body


@pytest.mark.parametrize("name", list(DIFFERENTIAL))
def test_same_decision_as_native_jwt_authn(envoy, native, name):
    """jwt-authz decides as the rules say; jwt_authn the same (both refusing with the same message,
    or one of DIFFERENT_REASONS), except for NATIVE_ACCEPTS, where jwt_authn lets through what the
    rules refuse."""
    make, expected = DIFFERENTIAL[name]
    text = make()
    ours = decide(envoy, f"/differential/{name}", text)
    theirs = decide(native, f"/differential/{name}", text)
    outcome = (*ours, *theirs)
    assert ours == ((200, ours[1]) if expected == ALLOWED else (401, REASON_MESSAGES[expected])), outcome
    if name in NATIVE_ACCEPTS:
        assert theirs[0] == 200, outcome
        return
    assert ours[0] == theirs[0], outcome
    if ours[0] == 401:
        assert ours[1] == theirs[1] or (ours[1], theirs[1]) in DIFFERENT_REASONS, outcome

