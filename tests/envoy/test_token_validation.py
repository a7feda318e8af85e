"""Token validation in real Envoy: every malformed, unsigned, wrongly signed, foreign, expired or
misaddressed token is 401 with its own message, whatever the policy of the path; the clock skew
allowed, and the audience as a string or a list."""

import json
import time

import pytest

from testbed.expect import (ALG, AUDIENCE, BASE64, EXPIRED, FORM, ISSUER, JSON, KID, NO_EXP, NOT_YET, VERIFY, bearer,
                            expect_allowed, expect_rejected)
from testbed.tokens import b64url, b64url_decode, mint, other_key, raw_token, token_payload


def tampered(token):
    header, payload, signature = token.split(".")
    claims = json.loads(b64url_decode(payload))
    claims["preferred_username"] = "mallory"
    return f"{header}.{b64url(json.dumps(claims))}.{signature}"


def signature_of(token, signature):
    return token.rsplit(".", 1)[0] + "." + signature


def truncated_signature(token):
    signing_input, signature = token.rsplit(".", 1)
    return f"{signing_input}.{b64url(b64url_decode(signature)[:200])}"


def payload_of(idp):
    return token_payload(mint(idp))


BAD_TOKENS = {
    "one-part": (lambda idp: "abc", FORM),
    "two-parts": (lambda idp: mint(idp).rsplit(".", 1)[0], FORM),
    "four-parts": (lambda idp: mint(idp) + ".x", FORM),
    "header-not-base64url": (lambda idp: raw_token("e*J", payload_of(idp), b"sig"), BASE64),
    "payload-not-base64url": (lambda idp: raw_token({"alg": "RS256", "kid": idp.kid}, "ab$c", b"sig"), BASE64),
    "signature-not-base64url": (lambda idp: signature_of(mint(idp), "a*b"), BASE64),
    "header-not-json": (lambda idp: raw_token(b"not json", payload_of(idp), b"sig"), JSON),
    "header-json-string": (lambda idp: raw_token(b'"RS256"', payload_of(idp), b"sig"), JSON),
    "payload-not-json": (lambda idp: raw_token({"alg": "RS256", "kid": idp.kid}, b"{broken", b"sig"), JSON),
    "payload-json-array": (lambda idp: raw_token({"alg": "RS256", "kid": idp.kid}, [1, 2], b"sig"), JSON),
    "alg-none": (lambda idp: raw_token({"alg": "none", "typ": "JWT"}, payload_of(idp), b""), ALG),
    "alg-HS256": (lambda idp: mint(idp, header={"alg": "HS256"}), ALG),
    # The realm's key is published with `alg: RS256`: it never verifies another algorithm, so an
    # RS256 signature relabelled RS512 or PS256 finds no key (as in Envoy's jwt_authn).
    "alg-RS512": (lambda idp: mint(idp, header={"alg": "RS512"}), KID),
    "alg-PS256": (lambda idp: mint(idp, header={"alg": "PS256"}), KID),
    "alg-missing": (lambda idp: mint(idp, header={"alg": None}), ALG),
    "issuer-unknown": (lambda idp: mint(idp, iss="https://evil.example/realms/shop"), ISSUER),
    "issuer-missing": (lambda idp: mint(idp, iss=None), ISSUER),
    "exp-missing": (lambda idp: mint(idp, exp=None), NO_EXP),
    "expired": (lambda idp: mint(idp, exp=int(time.time()) - 120), EXPIRED),
    "not-yet-valid": (lambda idp: mint(idp, nbf=int(time.time()) + 120), NOT_YET),
    "aud-string-other": (lambda idp: mint(idp, aud="other"), AUDIENCE),
    "aud-list-other": (lambda idp: mint(idp, aud=["other", "account"]), AUDIENCE),
    "aud-missing": (lambda idp: mint(idp, aud=None), AUDIENCE),
    "kid-unknown": (lambda idp: mint(idp, header={"kid": "no-such-kid"}), KID),
    "kid-of-enc-key": (
        lambda idp: mint(idp, header={"kid": next(k["kid"] for k in idp.certs()["keys"] if k["use"] == "enc")}),
        KID),
    "signed-by-other-key": (lambda idp: mint(idp, key=other_key()), VERIFY),
    "payload-tampered": (lambda idp: tampered(mint(idp)), VERIFY),
    "signature-truncated": (lambda idp: truncated_signature(mint(idp)), VERIFY),
}


@pytest.mark.parametrize("path", ["/healthz", "/api/public/x"])
@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_rejected_token_is_401_whatever_the_policy(shop, idp, case, path):
    make_token, message = BAD_TOKENS[case]
    expect_rejected(shop, shop.get(path, bearer(make_token(idp))), path, message)


@pytest.mark.parametrize("claim, offset", [("exp", -30), ("nbf", 30)])
def test_clock_skew_of_60_seconds_is_tolerated(shop, idp, claim, offset):
    token = mint(idp, "bob", **{claim: int(time.time()) + offset})
    expect_allowed(shop.get("/api/public/x", bearer(token)))


@pytest.mark.parametrize("aud", ["shop", ["account", "shop"]], ids=["string", "list"])
def test_audience_may_be_a_string_or_a_list(shop, idp, aud):
    expect_allowed(shop.get("/api/public/x", bearer(mint(idp, "bob", aud=aud))))
