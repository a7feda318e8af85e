"""Smoke tests of the test bed itself (tools/testbed): the dev IdP, the echo backend, token minting
(every JWS algorithm, checked with cryptography's verifiers), JWKs, the JWKS server and a filterless
Envoy."""

import hashlib
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

import devidp
from testbed.envoy import start_envoy
from testbed.keys import ALGORITHMS, jwk, signing_key
from testbed.keys import public_key_from_jwk as any_public_key_from_jwk
from testbed.net import http_request
from testbed.services import serve_jwks, start_idp
from testbed.tokens import (b64url, b64url_decode, der_to_raw, jws, mint, mint_as, raw_to_der, raw_token, sign,
                            token_payload)

# What each algorithm's key looks like in Keycloak 26's JWKS: kty, and the members beside kid, kty,
# alg and use (RSA keys there also carry their certificate, x5c, which the dev IdP does not make).
JWK_SHAPES = {
    "RS256": ("RSA", {"n", "e"}),
    "PS256": ("RSA", {"n", "e"}),
    "ES256": ("EC", {"crv", "x", "y"}),
    "EdDSA": ("OKP", {"crv", "x"}),
}
# The dev IdP's algorithms, in the order its JWKS lists their keys.
IDP_ALGORITHMS = list(JWK_SHAPES)


def jwk_integer(jwk, member):
    return int.from_bytes(b64url_decode(jwk[member]), "big")


def public_key_from_jwk(jwk):
    """The public key a JWK describes, read back by cryptography (independently of the IdP's code)."""
    if jwk["kty"] == "RSA":
        return rsa.RSAPublicNumbers(jwk_integer(jwk, "e"), jwk_integer(jwk, "n")).public_key()
    if jwk["kty"] == "EC":
        assert jwk["crv"] == "P-256", jwk
        # RFC 7518 §6.2.1.2: each coordinate is exactly as long as the curve's field, zeros kept.
        assert len(b64url_decode(jwk["x"])) == len(b64url_decode(jwk["y"])) == 32, jwk
        return ec.EllipticCurvePublicNumbers(jwk_integer(jwk, "x"), jwk_integer(jwk, "y"), ec.SECP256R1()).public_key()
    if jwk["kty"] == "OKP":
        assert jwk["crv"] == "Ed25519", jwk
        return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    raise AssertionError(f"unexpected kty in {jwk}")


def verify_signature(alg, public_key, signature, data):
    """Raises InvalidSignature unless signature is alg's JWS signature of data by public_key."""
    if alg == "RS256":
        public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "PS256":
        public_key.verify(signature, data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                          hashes.SHA256())
    elif alg == "ES256":
        # A JWS carries r || s (RFC 7518 §3.4); a DER signature (about 70 bytes) is not one.
        assert len(signature) == 64, f"ES256 signature of {len(signature)} bytes is not r || s"
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        public_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    elif alg == "EdDSA":
        public_key.verify(signature, data)
    else:
        raise AssertionError(f"unexpected alg {alg}")


def verify_with_jwks(token, jwks):
    """Header and payload of token after checking its signature against the JWKS key of its kid,
    with the algorithm the key is bound to (which must be the one the header names)."""
    header_segment, payload_segment, signature = token.split(".")
    header = json.loads(b64url_decode(header_segment))
    jwk = next(key for key in jwks["keys"] if key["kid"] == header["kid"])
    assert (jwk["use"], jwk["alg"]) == ("sig", header["alg"]), (jwk, header)
    verify_signature(header["alg"], public_key_from_jwk(jwk), b64url_decode(signature),
                     f"{header_segment}.{payload_segment}".encode())
    return header, json.loads(b64url_decode(payload_segment))


def signing_kids(idp):
    """alg -> the kids of its published signing keys, active first."""
    kids = {}
    for key in idp.signing_jwks():
        kids.setdefault(key["alg"], []).append(key["kid"])
    return kids


def get_json(port, path):
    status, headers, body = http_request(port, "GET", path)
    return status, headers, json.loads(body)


def test_discovery_document(idp):
    status, _, document = get_json(idp.port, "/realms/shop/.well-known/openid-configuration")
    assert status == 200
    assert document["issuer"] == idp.issuer
    assert document["jwks_uri"] == idp.jwks_uri
    assert document["token_endpoint"] == idp.token_url
    # Exactly the algorithms of the keys the JWKS serves.
    assert document["id_token_signing_alg_values_supported"] == list(signing_kids(idp))
    assert set(document["grant_types_supported"]) == {"password", "client_credentials"}


def test_unknown_realm_is_404(idp):
    status, _, _ = http_request(idp.port, "GET", "/realms/other/.well-known/openid-configuration")
    assert status == 404


def test_certs_publish_a_signing_key_per_algorithm_and_an_encryption_key(idp):
    status, headers, jwks = get_json(idp.port, "/realms/shop/protocol/openid-connect/certs")
    assert status == 200
    assert headers["cache-control"] == "no-cache"
    signing = [key for key in jwks["keys"] if key["use"] == "sig"]
    [encryption] = [key for key in jwks["keys"] if key["use"] == "enc"]
    assert len(signing) + 1 == len(jwks["keys"])
    # One key per algorithm, as Keycloak's providers make them: PS256 shares nothing with RS256.
    assert [key["alg"] for key in signing] == IDP_ALGORITHMS
    kids = [key["kid"] for key in jwks["keys"]]
    assert len(set(kids)) == len(kids)
    assert len({key.get("n") for key in signing if key["kty"] == "RSA"}) == 2
    assert (encryption["kty"], encryption["alg"]) == ("RSA", "RSA-OAEP")
    for key in jwks["keys"]:
        kty, members = JWK_SHAPES.get(key["alg"], ("RSA", {"n", "e"}))
        assert key["kty"] == kty and set(key) == {"kid", "kty", "alg", "use"} | members, key
        assert all("=" not in key[member] for member in members - {"crv"}), key
        # Keycloak's kid: the SHA-256 of the key's SubjectPublicKeyInfo, which only a JWK read back
        # to the very same public key reproduces.
        spki = public_key_from_jwk(key).public_bytes(serialization.Encoding.DER,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)
        assert key["kid"] == b64url(hashlib.sha256(spki).digest()), key
    assert signing[0]["kid"] == idp.kid
    own = idp.private_key.public_key().public_numbers()
    assert public_key_from_jwk(signing[0]).public_numbers() == own


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
    # Keycloak: the client's default scopes that go into `scope`; openid only when asked for.
    assert claims["scope"] == "profile email"
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
    assert answer["scope"] == "profile email"
    status, answer = idp.token_request({"grant_type": "password", "client_id": "shop-web", "username": "bob",
                                        "password": "bob", "scope": "openid phone"})
    assert status == 200 and answer["scope"] == "openid profile email phone", answer


def test_a_client_s_tokens_are_signed_with_its_own_algorithm(idp):
    """shop-mobile names ES256 (Keycloak's access.token.signed.response.alg); the other clients get
    the realm's default, RS256."""
    mobile = idp.password_token("alice", "alice", client_id="shop-mobile")
    header, claims = verify_with_jwks(mobile, idp.certs())
    assert header == {"alg": "ES256", "typ": "JWT", "kid": idp.signing_jwk("ES256")["kid"]}
    assert (claims["azp"], claims["preferred_username"]) == ("shop-mobile", "alice")
    web = idp.password_token("alice", "alice", client_id="shop-web")
    assert verify_with_jwks(web, idp.certs())[0]["alg"] == "RS256"
    # A signature of the same key over other claims does not verify these.
    other = idp.password_token("bob", "bob", client_id="shop-mobile")
    with pytest.raises(InvalidSignature):
        verify_with_jwks(".".join(mobile.split(".")[:2] + other.split(".")[2:]), idp.certs())


@pytest.fixture(scope="module")
def idp_with_a_client_per_algorithm(tmp_path_factory):
    """A dev IdP whose realm has one public client per algorithm (`app-<alg>`), from a realm file in
    the IdP's own JSON shape."""
    workdir = tmp_path_factory.mktemp("idp-per-algorithm")
    clients = {f"app-{alg}": {"publicClient": True, "directAccessGrants": True,
                              "accessTokenSignatureAlgorithm": alg} for alg in IDP_ALGORITHMS}
    realm = {**devidp.DEFAULT_REALM, "clients": {**devidp.DEFAULT_REALM["clients"], **clients}}
    realm_file = workdir / "realm.json"
    realm_file.write_text(json.dumps(realm))
    with start_idp(workdir, "--realm-file", str(realm_file)) as server:
        yield server


@pytest.mark.parametrize("alg", IDP_ALGORITHMS)
def test_each_algorithm_signs_tokens_that_verify_with_its_published_key(idp_with_a_client_per_algorithm, alg):
    idp = idp_with_a_client_per_algorithm
    token = idp.password_token("bob", "bob", client_id=f"app-{alg}")
    header, claims = verify_with_jwks(token, idp.certs())
    assert header == {"alg": alg, "typ": "JWT", "kid": idp.signing_jwk(alg)["kid"]}
    assert claims["azp"] == f"app-{alg}"
    head, payload, signature = token.split(".")
    raw = bytearray(b64url_decode(signature))
    raw[len(raw) // 2] ^= 1
    with pytest.raises(InvalidSignature):
        verify_with_jwks(f"{head}.{payload}.{b64url(bytes(raw))}", idp.certs())


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
        before = signing_kids(own_idp)
        old_kid = own_idp.kid
        new_kid = own_idp.rotate()
        assert new_kid != old_kid
        after = signing_kids(own_idp)
        assert after == {**before, "RS256": [new_kid]}, "only the RS256 key changes"
        assert own_idp.signing_jwk("RS256")["n"] == devidp.jwk(own_idp.private_key, "sig", "RS256")["n"], \
            "the key file holds the new key"
        _, claims = verify_with_jwks(own_idp.password_token("bob", "bob"), own_idp.certs())
        assert claims["preferred_username"] == "bob"
        verify_with_jwks(mint(own_idp, "bob"), own_idp.certs())


def test_rotate_keeps_the_previous_key_of_any_algorithm_when_asked(tmp_path):
    with start_idp(tmp_path) as own_idp:
        before = signing_kids(own_idp)
        old_token = own_idp.password_token("bob", "bob", client_id="shop-mobile")
        new_kid = own_idp.rotate(keep_previous=True, alg="ES256")
        assert signing_kids(own_idp) == {**before, "ES256": [new_kid, *before["ES256"]]}
        new_token = own_idp.password_token("bob", "bob", client_id="shop-mobile")
        assert verify_with_jwks(new_token, own_idp.certs())[0]["kid"] == new_kid
        assert verify_with_jwks(old_token, own_idp.certs())[0]["kid"] == before["ES256"][0]
        # Persisted like the RS256 key, beside it.
        kept = devidp.load_or_create_key(str(tmp_path / "idp-key.es256.pem"), "ES256")
        assert devidp.key_id(kept.public_key()) == new_kid
        status, _, body = http_request(own_idp.port, "POST", "/_test/rotate",
                                       {"Content-Type": "application/json"}, json.dumps({"alg": "HS256"}))
        assert status == 400 and "HS256" in body


def test_every_signing_key_survives_a_restart(tmp_path):
    """Keys are kept in files beside --key-file (Keycloak keeps them in its database)."""
    with start_idp(tmp_path) as first:
        kids = signing_kids(first)
    assert sorted(path.name for path in tmp_path.glob("idp-key*.pem")) == [
        "idp-key.eddsa.pem", "idp-key.es256.pem", "idp-key.pem", "idp-key.ps256.pem"]
    with start_idp(tmp_path) as second:
        assert signing_kids(second) == kids
        assert second.kid == kids["RS256"][0]


def test_a_key_file_of_the_wrong_type_is_refused(tmp_path):
    rsa_file = tmp_path / "rsa.pem"
    devidp.write_key(str(rsa_file), devidp.new_rsa_key())
    assert devidp.load_or_create_key(str(rsa_file), "PS256")
    for alg in ("ES256", "EdDSA"):
        with pytest.raises(ValueError, match=f"not a key for {alg}"):
            devidp.load_or_create_key(str(rsa_file), alg)


@pytest.mark.parametrize("change, message", [
    ({"signatureAlgorithms": ["RS256", "ES384"]}, "no signing with ES384"),
    ({"defaultSignatureAlgorithm": "PS256", "signatureAlgorithms": ["RS256"]}, "the realm default signs with PS256"),
    ({"clients": {"app": {"accessTokenSignatureAlgorithm": "EdDSA"}}, "signatureAlgorithms": ["RS256", "ES256"]},
     "client app signs with EdDSA"),
])
def test_a_realm_whose_clients_need_a_key_it_lacks_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        devidp.Realm({**devidp.DEFAULT_REALM, **change}, "http://127.0.0.1/realms/shop", 300)


def key_provider(provider_id, **config):
    return {"name": provider_id, "providerId": provider_id, "subComponents": {},
            "config": {name: [value] for name, value in config.items()}}


@pytest.mark.parametrize("providers, algorithms", [
    # No key provider: Keycloak's import creates its defaults, whose one signing key is RS256.
    (None, ["RS256"]),
    ([key_provider("hmac-generated", algorithm="HS512"), key_provider("rsa-generated")], ["RS256"]),
    ([key_provider("ecdsa-generated", ecdsaEllipticCurveKey="P-256"), key_provider("eddsa-generated")],
     ["ES256", "EdDSA"]),
    ([key_provider("rsa-generated", algorithm="PS256"), key_provider("rsa-generated", algorithm="RS256", enabled="false"),
      key_provider("rsa-enc-generated", algorithm="RSA-OAEP"), key_provider("ecdsa-generated", active="false")],
     ["PS256"]),
])
def test_key_providers_of_a_keycloak_export_give_the_realm_s_algorithms(providers, algorithms):
    export = {"realm": "r", "users": [], "clients": []}
    if providers is not None:
        export["components"] = {"org.keycloak.keys.KeyProvider": providers}
    assert devidp.realm_from_keycloak_export(export)["signatureAlgorithms"] == algorithms


def test_an_export_with_a_key_the_idp_cannot_make_is_refused():
    export = {"realm": "r", "users": [], "clients": [], "components": {
        "org.keycloak.keys.KeyProvider": [key_provider("ecdsa-generated", ecdsaEllipticCurveKey="P-384")]}}
    with pytest.raises(ValueError, match="not ES384"):
        devidp.realm_from_keycloak_export(export)


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


# --- claims from the realm's protocol mappers and client scopes, as Keycloak derives them ----------------

def export_with(clients, **realm):
    """A Keycloak realm export with alice and these clients."""
    return {"realm": "shop", "users": [{"username": "alice", "enabled": True, "realmRoles": ["admin"],
                                        "credentials": [{"type": "password", "value": "alice"}]}],
            "clients": [{"enabled": True, "publicClient": True, "directAccessGrantsEnabled": True, **client}
                        for client in clients], **realm}


AUDIENCE_MAPPER = {"name": "api audience", "protocol": "openid-connect", "protocolMapper": "oidc-audience-mapper",
                   "config": {"included.custom.audience": "shop", "access.token.claim": "true"}}


def alice_claims(export, client_id, scope=""):
    realm = devidp.Realm(devidp.realm_from_keycloak_export(export), "http://127.0.0.1/realms/shop", 300)
    return realm.password_grant(client_id, realm.clients[client_id], "alice", "alice", scope)


def test_aud_comes_from_audience_mappers_and_audience_resolve_only():
    # Without an Audience mapper Keycloak's access token names only `account` (Audience Resolve:
    # the user has account roles), as a string: the commonest reason an API refuses its tokens.
    plain = alice_claims(export_with([{"clientId": "web"}]), "web")
    assert plain["aud"] == "account"
    mapped = alice_claims(export_with([{"clientId": "web", "protocolMappers": [AUDIENCE_MAPPER]}]), "web")
    assert mapped["aud"] == ["shop", "account"]
    # The mapper on a client scope assigned to the client works the same; not to the access token: no.
    scope = {"name": "shop-api", "protocol": "openid-connect", "attributes": {"include.in.token.scope": "true"},
             "protocolMappers": [AUDIENCE_MAPPER]}
    id_only = {**AUDIENCE_MAPPER, "config": {"included.client.audience": "other", "access.token.claim": "false"}}
    clients = [{"clientId": "web", "defaultClientScopes": ["profile", "roles", "shop-api"],
                "protocolMappers": [id_only]}]
    claims = alice_claims(export_with(clients, clientScopes=[scope]), "web")
    assert claims["aud"] == ["shop", "account"] and claims["scope"] == "profile shop-api"


def test_roles_and_profile_claims_follow_the_client_scopes():
    clients = [{"clientId": "web", "defaultClientScopes": ["email"], "optionalClientScopes": ["profile"]}]
    claims = alice_claims(export_with(clients), "web")
    # No `roles` scope: no realm_access, no resource_access, and no Audience Resolve (no aud at all).
    assert "realm_access" not in claims and "resource_access" not in claims and "aud" not in claims
    assert claims["scope"] == "email" and "preferred_username" not in claims and claims["email_verified"]
    asked = alice_claims(export_with(clients), "web", "openid profile")
    assert asked["scope"] == "openid email profile" and asked["preferred_username"] == "alice"
    # A scope the client does not have: Keycloak's 400 invalid_scope, not a silently smaller token.
    with pytest.raises(devidp.OAuthError) as refused:
        alice_claims(export_with(clients), "web", "phone")
    assert (refused.value.status, refused.value.error) == (400, "invalid_scope")


def test_a_token_of_a_client_without_an_audience_mapper_is_refused_by_jwt_authz(tmp_path, backend):
    """What a local run catches before the mesh does: the realm's mappers decide `aud`."""
    export = export_with([{"clientId": "web"}, {"clientId": "api-client", "protocolMappers": [AUDIENCE_MAPPER]}])
    realm_file = tmp_path / "realm.json"
    realm_file.write_text(json.dumps(export))
    with start_idp(tmp_path, "--realm-file", str(realm_file)) as idp:
        config = {"jwtRules": [{"issuer": idp.issuer, "audiences": ["shop"], "jwksUri": idp.jwks_uri,
                                "jwksCluster": "idp"}],
                  "policies": [{"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}]}
        with start_envoy(config, backend=backend, idp=idp) as envoy:
            unmapped = idp.password_token("alice", "alice", client_id="web")
            status, headers, _ = envoy.get("/api", {"Authorization": f"Bearer {unmapped}"})
            assert status == 401 and "Audiences in Jwt are not allowed" in headers.get("www-authenticate", "")
            mapped = idp.password_token("alice", "alice", client_id="api-client")
            assert envoy.get("/api", {"Authorization": f"Bearer {mapped}"})[0] == 200



def test_the_legacy_auth_prefix_of_keycloak_before_17(idp, backend):
    """Keycloak < 17 served realms under /auth and put that in `iss`: the dev IdP answers there too,
    and jwt-authz configured with that issuer (as pre-Istio-1.5 guides did) verifies its tokens."""
    legacy = f"http://127.0.0.1:{idp.port}/auth/realms/shop"
    status, _, document = get_json(idp.port, "/auth/realms/shop/.well-known/openid-configuration")
    assert status == 200
    assert document["issuer"] == legacy and document["jwks_uri"] == legacy + "/protocol/openid-connect/certs"
    status, answer = idp.token_request({"grant_type": "password", "client_id": "shop-web",
                                        "username": "alice", "password": "alice"}, path_prefix="/auth")
    assert status == 200
    _, claims = verify_with_jwks(answer["access_token"], idp.certs())
    assert claims["iss"] == legacy
    # The current prefix still names the current issuer.
    assert token_payload(idp.password_token("alice", "alice"))["iss"] == idp.issuer
    config = {"jwtRules": [{"issuer": legacy, "jwksUri": document["jwks_uri"], "jwksCluster": "idp"}],
              "policies": [{"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}]}
    with start_envoy(config, backend=backend, idp=idp) as envoy:
        assert envoy.get("/api", {"Authorization": f"Bearer {answer['access_token']}"})[0] == 200
        # A token of the same realm fetched under the new prefix names another issuer.
        assert envoy.get("/api", {"Authorization": f"Bearer {idp.password_token('alice', 'alice')}"})[0] == 401
