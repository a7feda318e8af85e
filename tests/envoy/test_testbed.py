"""Smoke tests of the test bed itself (tools/testbed): the dev IdP, the echo backend, token minting
(every JWS algorithm, checked with cryptography's verifiers), JWKs, the JWKS server and a filterless
Envoy."""

import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from testbed.envoy import start_envoy
from testbed.keys import ALGORITHMS, jwk, signing_key
from testbed.keys import public_key_from_jwk as any_public_key_from_jwk
from testbed.net import http_request
from testbed.services import serve_jwks, start_idp
from testbed.tokens import b64url_decode, der_to_raw, jws, mint, mint_as, raw_to_der, raw_token, sign, token_payload


def public_key_from_jwk(jwk):
    number = lambda field: int.from_bytes(b64url_decode(jwk[field]), "big")  # noqa: E731
    return rsa.RSAPublicNumbers(number("e"), number("n")).public_key()


def verify_with_jwks(token, jwks):
    """Header and payload of token after checking its RS256 signature against the JWKS key of its kid."""
    header_segment, payload_segment, signature = token.split(".")
    header = json.loads(b64url_decode(header_segment))
    jwk = next(key for key in jwks["keys"] if key["kid"] == header["kid"])
    public_key_from_jwk(jwk).verify(
        b64url_decode(signature),
        f"{header_segment}.{payload_segment}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    return header, json.loads(b64url_decode(payload_segment))


def get_json(port, path):
    status, headers, body = http_request(port, "GET", path)
    return status, headers, json.loads(body)


def test_discovery_document(idp):
    status, _, document = get_json(idp.port, "/realms/shop/.well-known/openid-configuration")
    assert status == 200
    assert document["issuer"] == idp.issuer
    assert document["jwks_uri"] == idp.jwks_uri
    assert document["token_endpoint"] == idp.token_url
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    assert set(document["grant_types_supported"]) == {"password", "client_credentials"}


def test_unknown_realm_is_404(idp):
    status, _, _ = http_request(idp.port, "GET", "/realms/other/.well-known/openid-configuration")
    assert status == 404


def test_certs_publish_a_signing_key_and_an_encryption_key(idp):
    status, headers, jwks = get_json(idp.port, "/realms/shop/protocol/openid-connect/certs")
    assert status == 200
    assert headers["cache-control"] == "no-cache"
    by_use = {key["use"]: key for key in jwks["keys"]}
    assert set(by_use) == {"sig", "enc"}
    assert by_use["sig"]["alg"] == "RS256" and by_use["enc"]["alg"] == "RSA-OAEP"
    assert by_use["sig"]["kid"] == idp.kid != by_use["enc"]["kid"]
    for key in jwks["keys"]:
        assert key["kty"] == "RSA"
        assert "=" not in key["n"] + key["e"]
    own = idp.private_key.public_key().public_numbers()
    assert public_key_from_jwk(by_use["sig"]).public_numbers() == own


def test_password_grant_issues_a_keycloak_shaped_token(idp):
    token = idp.password_token("alice", "alice")
    header, claims = verify_with_jwks(token, idp.certs())
    assert header == {"alg": "RS256", "typ": "JWT", "kid": idp.kid}
    assert claims["iss"] == idp.issuer
    assert claims["aud"] == ["shop", "account"]
    assert claims["azp"] == "shop-web"
    assert claims["typ"] == "Bearer"
    assert claims["preferred_username"] == "alice"
    assert claims["name"] == "Alice Admin"
    assert claims["email"] == "alice@shop.example"
    assert {"user", "admin", "default-roles-shop", "offline_access"} <= set(claims["realm_access"]["roles"])
    assert claims["resource_access"]["account"]["roles"] == ["manage-account", "view-profile"]
    assert claims["scope"] == "openid profile email"
    assert 299 <= claims["exp"] - claims["iat"] <= 300
    assert claims["sub"] == token_payload(idp.password_token("alice", "alice"))["sub"]
    for name in ("jti", "auth_time", "session_state", "acr", "allowed-origins", "email_verified"):
        assert name in claims


def test_password_grant_token_response_fields(idp):
    status, answer = idp.token_request(
        {"grant_type": "password", "client_id": "shop-web", "username": "bob", "password": "bob"})
    assert status == 200
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 300
    assert answer["refresh_expires_in"] == 0
    assert answer["not-before-policy"] == 0
    assert answer["scope"] == "openid profile email"


@pytest.mark.parametrize("basic", [False, True], ids=["form", "basic-auth"])
def test_client_credentials_grant(idp, basic):
    form = {"grant_type": "client_credentials"}
    credentials = ("shop-backend", "shop-backend-secret")
    if not basic:
        form.update(client_id=credentials[0], client_secret=credentials[1])
    status, answer = idp.token_request(form, basic_auth=credentials if basic else None)
    assert status == 200, answer
    _, claims = verify_with_jwks(answer["access_token"], idp.certs())
    assert claims["azp"] == claims["clientId"] == "shop-backend"
    assert claims["preferred_username"] == "service-account-shop-backend"
    assert claims["resource_access"]["shop-backend"]["roles"] == ["reader"]
    assert "service" in claims["realm_access"]["roles"]
    assert "session_state" not in claims


@pytest.mark.parametrize("form, status, error", [
    ({"grant_type": "password", "client_id": "shop-web", "username": "alice", "password": "nope"},
     401, "invalid_grant"),
    ({"grant_type": "password", "client_id": "shop-web", "username": "mallory", "password": "x"},
     401, "invalid_grant"),
    ({"grant_type": "client_credentials", "client_id": "shop-backend", "client_secret": "wrong"},
     401, "invalid_client"),
    ({"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"},
     401, "invalid_client"),
    ({"grant_type": "client_credentials", "client_id": "shop-web"}, 400, "unauthorized_client"),
    ({"grant_type": "authorization_code", "client_id": "shop-web"}, 400, "unsupported_grant_type"),
])
def test_token_endpoint_errors(idp, form, status, error):
    answer_status, answer = idp.token_request(form)
    assert (answer_status, answer["error"]) == (status, error)
    if error == "invalid_grant":
        assert answer["error_description"] == "Invalid user credentials"


def test_hits_count_requests(idp):
    before = idp.hits()
    idp.certs()
    idp.password_token("bob", "bob")
    after = idp.hits()
    assert after["certs"] == before["certs"] + 1
    assert after["token"] == before["token"] + 1
    assert after["discovery"] == before["discovery"]


def test_certs_mode_changes_and_restores_certs(idp):
    idp.certs_mode(status=500)
    assert http_request(idp.port, "GET", "/realms/shop/protocol/openid-connect/certs")[0] == 500
    idp.certs_mode(body="not json")
    status, _, body = http_request(idp.port, "GET", "/realms/shop/protocol/openid-connect/certs")
    assert (status, body) == (200, "not json")
    idp.reset_certs_mode()
    assert idp.certs()["keys"]


def test_rotate_serves_only_the_new_signing_key(tmp_path):
    with start_idp(tmp_path) as own_idp:
        old_kid = own_idp.kid
        new_kid = own_idp.rotate()
        assert new_kid != old_kid
        kids = {key["use"]: key["kid"] for key in own_idp.certs()["keys"]}
        assert kids["sig"] == new_kid and len(kids) == 2
        _, claims = verify_with_jwks(own_idp.password_token("bob", "bob"), own_idp.certs())
        assert claims["preferred_username"] == "bob"
        verify_with_jwks(mint(own_idp, "bob"), own_idp.certs())


def test_mint_signs_with_the_idp_key_and_applies_overrides(idp):
    token = mint(idp, "bob", header={"typ": None, "x": 1}, exp=123, nbf=None, claims={"allowed-origins": None})
    header, claims = verify_with_jwks(token, idp.certs())
    assert header == {"alg": "RS256", "kid": idp.kid, "x": 1}
    assert claims["exp"] == 123
    assert "allowed-origins" not in claims and "nbf" not in claims
    assert claims["preferred_username"] == "bob"
    assert claims["sub"] == token_payload(idp.password_token("bob", "bob"))["sub"]


def test_mint_with_another_key_fails_verification(idp):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(InvalidSignature):
        verify_with_jwks(mint(idp, key=other), idp.certs())


def test_raw_token_assembles_segments():
    assert raw_token({"alg": "none"}, "payload", b"\xff") == "eyJhbGciOiJub25lIn0.payload._w"


def test_backend_echoes_requests(backend):
    status, headers, body = backend.get("/some/path?q=1", {"X-Thing": "yes"}, method="DELETE")
    assert status == 200
    assert headers["x-backend"] == "demo"
    echo = json.loads(body)
    assert echo["method"] == "DELETE"
    assert echo["path"] == "/some/path?q=1"
    assert echo["headers"]["x-thing"] == "yes"


def test_envoy_without_filter_proxies_to_backend(backend):
    with start_envoy({}, backend=backend, wasm=False) as envoy:
        status, headers, body = envoy.get("/hello?x=1", {"X-Probe": "1"})
        assert status == 200
        assert headers["x-backend"] == "demo"
        echo = json.loads(body)
        assert echo["path"] == "/hello?x=1"
        assert echo["headers"]["x-probe"] == "1"
        assert envoy.get("/a/../b")[0] == 200
        assert json.loads(envoy.get("/a/../b")[2])["path"] == "/b"
        assert envoy.stats()["http.ingress.downstream_rq_completed"] >= 3


def test_envoy_sends_raw_paths_when_normalization_is_off(backend):
    with start_envoy({}, backend=backend, wasm=False, normalize_path=False) as envoy:
        for raw in ("/a/../b", "/%2e%2e/x", "/x//y", "/healthz%00", "/api%2Fadmin/x"):
            status, _, body = envoy.get(raw)
            assert status == 200
            assert json.loads(body)["path"] == raw


def test_envoy_refusing_its_config_is_reported(backend):
    with start_envoy({}, backend=backend, wasm=False, clusters={"backend": -1},
                             expect_failure=True) as envoy:
        assert envoy.exit_code == 1
        assert "socket_address.port_value" in envoy.log_text()


# --- Every algorithm -----------------------------------------------------------------------------------

# RFC 7518 §3.3-3.5 and RFC 8037 §3.1, written out here rather than taken from testbed.tokens.
SHA = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
ECDSA_SIGNATURE_BYTES = {"ES256": 64, "ES384": 96, "ES512": 132}


def verify_jws(alg, public_key, signature, data):
    """Raises InvalidSignature unless signature is alg's JWS signature of data by public_key."""
    if alg.startswith("RS"):
        public_key.verify(signature, data, padding.PKCS1v15(), SHA[alg[2:]])
    elif alg.startswith("PS"):
        digest = SHA[alg[2:]]
        public_key.verify(signature, data, padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size), digest)
    elif alg.startswith("ES"):
        if len(signature) != ECDSA_SIGNATURE_BYTES[alg]:
            raise InvalidSignature(f"{alg} signature of {len(signature)} bytes")
        half = len(signature) // 2
        der = encode_dss_signature(int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big"))
        public_key.verify(der, data, ec.ECDSA(SHA[alg[2:]]))
    else:
        assert alg == "EdDSA"
        public_key.verify(signature, data)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_every_algorithm_signs_verifiably_with_the_key_of_its_jwk(alg):
    text = mint_as(alg, signing_key(alg), "https://issuer.example", kid="k1")
    header, payload, signature = text.split(".")
    assert json.loads(b64url_decode(header)) == {"alg": alg, "typ": "JWT", "kid": "k1"}
    data, signature = f"{header}.{payload}".encode(), b64url_decode(signature)
    public = any_public_key_from_jwk(jwk(signing_key(alg), kid="k1"))
    verify_jws(alg, public, signature, data)
    with pytest.raises(InvalidSignature):
        verify_jws(alg, public, signature, data + b"x")
    with pytest.raises(InvalidSignature):
        verify_jws(alg, any_public_key_from_jwk(jwk(signing_key(alg, 1))), signature, data)


@pytest.mark.parametrize("alg", ["PS256", "PS384", "PS512"])
def test_pss_salt_is_as_long_as_the_hash(alg):
    data = b"header.payload"
    digest = SHA[alg[2:]]
    public = signing_key(alg).public_key()
    signature = sign(alg, data, signing_key(alg))
    for other in (0, digest.digest_size - 1, digest.digest_size + 1):
        with pytest.raises(InvalidSignature):
            public.verify(signature, data, padding.PSS(mgf=padding.MGF1(digest), salt_length=other), digest)
    unsalted = sign(alg, data, signing_key(alg), pss_salt_length=0)
    public.verify(unsalted, data, padding.PSS(mgf=padding.MGF1(digest), salt_length=0), digest)


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512"])
def test_ecdsa_raw_and_der_forms(alg):
    key, data = signing_key(alg), b"header.payload"
    der = sign(alg, data, key, ecdsa_der=True)
    key.public_key().verify(der, data, ec.ECDSA(SHA[alg[2:]]))
    raw = der_to_raw(der, ECDSA_SIGNATURE_BYTES[alg] // 2)
    assert len(raw) == ECDSA_SIGNATURE_BYTES[alg]
    assert raw_to_der(raw) == der and decode_dss_signature(der)[0] == int.from_bytes(raw[:len(raw) // 2], "big")
    # Small r and s are left-padded to the curve size, never shortened.
    small = encode_dss_signature(1, 2)
    assert der_to_raw(small, ECDSA_SIGNATURE_BYTES[alg] // 2) == (
        (1).to_bytes(ECDSA_SIGNATURE_BYTES[alg] // 2, "big") + (2).to_bytes(ECDSA_SIGNATURE_BYTES[alg] // 2, "big"))


def test_jwks_of_every_key_type():
    rsa_jwk = jwk(signing_key("RS256"), kid="r", alg="RS256", use="sig")
    assert set(rsa_jwk) == {"kty", "n", "e", "kid", "alg", "use"} and rsa_jwk["e"] == "AQAB"
    assert len(b64url_decode(rsa_jwk["n"])) == 256 and "=" not in rsa_jwk["n"]
    for alg, (crv, size) in {"ES256": ("P-256", 32), "ES384": ("P-384", 48), "ES512": ("P-521", 66)}.items():
        ec_jwk = jwk(signing_key(alg))
        assert (ec_jwk["kty"], ec_jwk["crv"]) == ("EC", crv) and set(ec_jwk) == {"kty", "crv", "x", "y"}
        assert len(b64url_decode(ec_jwk["x"])) == len(b64url_decode(ec_jwk["y"])) == size
    okp = jwk(signing_key("EdDSA"), use="enc", crv=None)
    assert set(okp) == {"kty", "x", "use"} and len(b64url_decode(okp["x"])) == 32


def test_ec_coordinates_keep_their_leading_zeros():
    key = next(k for k in (ec.generate_private_key(ec.SECP256R1()) for _ in range(20_000))
               if k.public_key().public_numbers().x < 2**248)
    document = jwk(key)
    assert len(b64url_decode(document["x"])) == 32 and b64url_decode(document["x"])[0] == 0
    assert any_public_key_from_jwk(document).public_numbers() == key.public_key().public_numbers()


def test_jws_signs_with_the_header_alg_unless_told_otherwise():
    key = signing_key("RS256")
    as_header = jws({"alg": "PS256"}, {"a": 1}, key)
    header, payload, signature = as_header.split(".")
    verify_jws("PS256", key.public_key(), b64url_decode(signature), f"{header}.{payload}".encode())
    swapped = jws({"alg": "PS256"}, {"a": 1}, key, sign_as="RS256")
    header, payload, signature = swapped.split(".")
    verify_jws("RS256", key.public_key(), b64url_decode(signature), f"{header}.{payload}".encode())


def test_serve_jwks_answers_the_given_key_set(tmp_path):
    document = {"keys": [jwk(signing_key(alg), kid=alg) for alg in ALGORITHMS]}
    with serve_jwks(tmp_path, document) as server:
        assert server.certs() == document
