"""A small Keycloak-shaped OpenID Connect identity provider for local development and tests.

Like a Keycloak realm with a key provider per algorithm, it signs with an RS256, PS256, ES256 (P-256)
and EdDSA (Ed25519) key, publishes them all, and signs a client's access tokens with the algorithm
the client names (Keycloak's access.token.signed.response.alg), by default the realm's (RS256)."""

import argparse
import base64
import binascii
import hashlib
import json
import os
import ssl
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

DEFAULT_REALM = {
    "realm": "shop",
    # One signing key per algorithm, as the realm's key providers make them in Keycloak
    # (rsa-generated twice, RS256 and PS256; ecdsa-generated P-256; eddsa-generated Ed25519).
    "signatureAlgorithms": ["RS256", "PS256", "ES256", "EdDSA"],
    # What a client's access tokens are signed with unless it names its own algorithm.
    "defaultSignatureAlgorithm": "RS256",
    "users": {
        "alice": {
            "password": "alice",
            "firstName": "Alice",
            "lastName": "Admin",
            "email": "alice@shop.example",
            "realmRoles": ["user", "admin"],
        },
        "bob": {
            "password": "bob",
            "firstName": "Bob",
            "lastName": "Buyer",
            "email": "bob@shop.example",
            "realmRoles": ["user"],
        },
        "testuser": {
            "password": "testuser",
            "firstName": "Test",
            "lastName": "User",
            "email": "testuser@shop.example",
            "realmRoles": ["backendaccess"],
        },
    },
    "clients": {
        # "audiences": what the client's Audience mappers add to `aud` (Keycloak puts a client in
        # `aud` only through one; without it, access tokens carry only `account`).
        "shop-web": {"publicClient": True, "directAccessGrants": True, "audiences": ["shop"]},
        # Keycloak's client attribute access.token.signed.response.alg.
        "shop-mobile": {"publicClient": True, "directAccessGrants": True, "audiences": ["shop"],
                        "accessTokenSignatureAlgorithm": "ES256"},
        "shop-backend": {
            "secret": "shop-backend-secret",
            "directAccessGrants": True,
            "audiences": ["shop"],
            "serviceAccount": {
                "realmRoles": ["service"],
                "clientRoles": {"shop-backend": ["reader"]},
            },
        },
        # Keycloak's client attribute tls.client.certificate.bound.access.tokens ("OAuth 2.0 Mutual
        # TLS Certificate Bound Access Tokens Enabled", RFC 8705): its tokens carry cnf.x5t#S256 of
        # the client certificate it presented at the token endpoint (--tls-port).
        "shop-partner": {
            "secret": "shop-partner-secret",
            "directAccessGrants": False,
            "audiences": ["shop"],
            "certificateBoundTokens": True,
            "serviceAccount": {"realmRoles": ["service"], "clientRoles": {}},
        },
        # Keycloak's client attribute dpop.bound.access.tokens ("Require DPoP bound tokens", RFC
        # 9449): a token request must carry a DPoP proof, and the token is bound to its key
        # (cnf.jkt). Any client's request with a proof gets a bound token, as in Keycloak.
        "shop-dpop": {"publicClient": True, "directAccessGrants": True, "audiences": ["shop"],
                      "dpopBoundTokens": True},
        # Opaque access tokens (a random reference, not a JWT), which resource servers must
        # introspect (RFC 7662). Keycloak issues JWTs only; this client stands in for identity
        # providers that issue reference tokens (client attribute dev.opaque.access.tokens, which
        # Keycloak keeps and ignores).
        "shop-opaque": {"publicClient": True, "directAccessGrants": True, "audiences": ["shop"],
                        "opaqueAccessTokens": True},
    },
}

DEFAULT_REALM_ROLES = ["default-roles-{realm}", "offline_access"]
ACCOUNT_ROLES = ["manage-account", "view-profile"]

# Keycloak's built-in client scopes (created in every realm, so an export need not carry them), what
# each puts in an access token, and whether its name goes into the `scope` claim
# (include.in.token.scope). A client without defaultClientScopes gets the realm's default ones.
BUILTIN_SCOPES = {
    "profile": {"includeInTokenScope": True, "claims": "profile"},
    "email": {"includeInTokenScope": True, "claims": "email"},
    # realm_access, resource_access, and the Audience Resolve mapper.
    "roles": {"includeInTokenScope": False, "claims": "roles", "audienceResolve": True},
    "web-origins": {"includeInTokenScope": False, "claims": "web-origins"},
    "acr": {"includeInTokenScope": False, "claims": "acr"},
    "basic": {"includeInTokenScope": False, "claims": "basic"},
    "offline_access": {"includeInTokenScope": True},
    "address": {"includeInTokenScope": True},
    "phone": {"includeInTokenScope": True},
    "microprofile-jwt": {"includeInTokenScope": True},
}
DEFAULT_CLIENT_SCOPES = ["web-origins", "acr", "profile", "roles", "basic", "email"]
OPTIONAL_CLIENT_SCOPES = ["address", "phone", "offline_access", "microprofile-jwt"]
AUDIENCE_MAPPER = "oidc-audience-mapper"
AUDIENCE_RESOLVE_MAPPER = "oidc-audience-resolve-mapper"


def mapper_audiences(mappers):
    """What the Audience mappers among `mappers` add to access tokens."""
    audiences = []
    for mapper in mappers or []:
        config = mapper.get("config", {})
        if mapper.get("protocolMapper") != AUDIENCE_MAPPER or config.get("access.token.claim", "true") == "false":
            continue
        # Keycloak's Audience mapper: the client audience when given, else the custom one.
        audience = config.get("included.client.audience") or config.get("included.custom.audience")
        if audience and audience not in audiences:
            audiences.append(audience)
    return audiences


def client_scopes_from_export(export):
    """The export's client scopes (`clientScopes`), shaped as BUILTIN_SCOPES: a scope of a built-in's
    name keeps what the built-in puts in tokens; its own mappers add audiences."""
    scopes = {}
    for scope in export.get("clientScopes", []):
        name = scope.get("name")
        mappers = scope.get("protocolMappers", [])
        entry = dict(BUILTIN_SCOPES.get(name, {}))
        entry["includeInTokenScope"] = scope.get("attributes", {}).get("include.in.token.scope", "true") == "true"
        entry["audiences"] = mapper_audiences(mappers)
        if any(m.get("protocolMapper") == AUDIENCE_RESOLVE_MAPPER for m in mappers):
            entry["audienceResolve"] = True
        scopes[name] = entry
    return scopes
CERTS_MODE_DEFAULTS = {"status": 200, "delay": 0, "body": None, "headers": None}


class OAuthError(Exception):
    """A token endpoint error, answered as Keycloak does."""

    def __init__(self, status, error, description):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_uint(number, length=None):
    """A JWK integer: big-endian, in `length` bytes where the field has a fixed size (EC
    coordinates, RFC 7518 §6.2.1.2), else the fewest that hold it (RSA n and e)."""
    return b64url(number.to_bytes(length or (number.bit_length() + 7) // 8, "big"))


def key_id(public_key):
    """Keycloak's kid for a generated key of any type: the SHA-256 of its SubjectPublicKeyInfo."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b64url(hashlib.sha256(der).digest())[:43]


# JWK crv names of the curves cryptography names after SEC 2.
EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def jwk(private_key, use, alg):
    """The public JWK of private_key as Keycloak 26 publishes it: kid, kty, alg, use, then the key's
    own members (RSA n and e; EC crv, x and y; OKP crv and x)."""
    public_key = private_key.public_key()
    head = {"kid": key_id(public_key)}
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return {**head, "kty": "RSA", "alg": alg, "use": use,
                "n": b64url_uint(numbers.n), "e": b64url_uint(numbers.e)}
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        numbers = public_key.public_numbers()
        size = (public_key.curve.key_size + 7) // 8
        return {**head, "kty": "EC", "alg": alg, "use": use, "crv": EC_CURVES[public_key.curve.name],
                "x": b64url_uint(numbers.x, size), "y": b64url_uint(numbers.y, size)}
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {**head, "kty": "OKP", "alg": alg, "use": use, "crv": "Ed25519", "x": b64url(raw)}
    raise TypeError(f"no JWK for a {type(public_key).__name__}")


def new_rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def new_p256_key():
    return ec.generate_private_key(ec.SECP256R1())


def sign_pkcs1v15_sha256(private_key, data):
    return private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def sign_pss_sha256(private_key, data):
    # RFC 7518 §3.5: MGF1 with the message's hash, and a salt as long as that hash.
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    return private_key.sign(data, pss, hashes.SHA256())


def sign_ecdsa_sha256(private_key, data):
    # cryptography answers with a DER SEQUENCE of two INTEGERs; a JWS carries r || s instead, each
    # left-padded to the size of the curve (RFC 7518 §3.4). A verifier given DER refuses it.
    r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(hashes.SHA256())))
    size = (private_key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def sign_ed25519(private_key, data):
    return private_key.sign(data)


class SigningAlgorithm(NamedTuple):
    """One JWS algorithm the IdP signs with: the key it needs and how a signature is made."""

    generate: Callable  # () -> a new private key
    holds: Callable  # private key -> whether it is a key for this algorithm (a key file's check)
    sign: Callable  # (private key, signing input bytes) -> the JWS signature bytes


def is_rsa(key):
    return isinstance(key, rsa.RSAPrivateKey)


SIGNING_ALGORITHMS = {
    "RS256": SigningAlgorithm(new_rsa_key, is_rsa, sign_pkcs1v15_sha256),
    # Keycloak's rsa-generated provider with algorithm PS256 has a key of its own, never the RS256 one.
    "PS256": SigningAlgorithm(new_rsa_key, is_rsa, sign_pss_sha256),
    "ES256": SigningAlgorithm(
        new_p256_key,
        lambda key: isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1",
        sign_ecdsa_sha256),
    # JWS alg EdDSA with an Ed25519 key (RFC 8037), as Keycloak's eddsa-generated provider signs.
    "EdDSA": SigningAlgorithm(
        ed25519.Ed25519PrivateKey.generate, lambda key: isinstance(key, ed25519.Ed25519PrivateKey), sign_ed25519),
}


def jwk_thumbprint(jwk):
    """RFC 7638: SHA-256 of the key's required members, in name order, as compact JSON."""
    members = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def b64url_decode(text):
    if "=" in text:
        raise ValueError("padded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_dpop_proof(proof, method, url, now):
    """A token request's DPoP proof checked as Keycloak checks one (RFC 9449 §4.3, without the
    replay store a real server keeps): the thumbprint of its key, or ValueError/InvalidSignature."""
    header_segment, payload_segment, signature_segment = proof.split(".")
    header = json.loads(b64url_decode(header_segment))
    claims = json.loads(b64url_decode(payload_segment))
    if not isinstance(header, dict) or not isinstance(claims, dict) or not isinstance(header.get("jwk"), dict):
        raise ValueError("header, claims and jwk must be JSON objects")
    if header.get("typ") != "dpop+jwt":
        raise ValueError("typ is not dpop+jwt")
    jwk = header["jwk"]
    if any(name in jwk for name in ("d", "p", "q", "dp", "dq", "qi", "oth", "k")):
        raise ValueError("jwk holds a private key")
    data, signature = f"{header_segment}.{payload_segment}".encode(), b64url_decode(signature_segment)
    public_key = public_key_from_jwk(jwk)
    alg = header["alg"]
    if alg == "ES256" and isinstance(public_key, ec.EllipticCurvePublicKey):
        if len(signature) != 64:
            raise ValueError("ES256 signature is not 64 bytes")
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        public_key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    elif alg == "RS256" and isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "PS256" and isinstance(public_key, rsa.RSAPublicKey):
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
        public_key.verify(signature, data, pss, hashes.SHA256())
    elif alg == "EdDSA" and isinstance(public_key, ed25519.Ed25519PublicKey):
        public_key.verify(signature, data)
    else:
        raise ValueError(f"alg {alg} is not one of ES256, RS256, PS256, EdDSA for this key")
    if claims.get("htm") != method or claims.get("htu") != url:
        raise ValueError(f"htm and htu must be {method} {url}")
    if not isinstance(claims.get("jti"), str) or abs(now - claims["iat"]) > 60:
        raise ValueError("jti missing, or iat more than 60 s away")
    return jwk_thumbprint(jwk)


def public_key_from_jwk(jwk):
    number = lambda name: int.from_bytes(b64url_decode(jwk[name]), "big")  # noqa: E731
    if jwk["kty"] == "EC" and jwk["crv"] == "P-256":
        return ec.EllipticCurvePublicNumbers(number("x"), number("y"), ec.SECP256R1()).public_key()
    if jwk["kty"] == "RSA":
        return rsa.RSAPublicNumbers(number("e"), number("n")).public_key()
    if jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    raise ValueError("jwk is not a P-256, RSA or Ed25519 public key")


def sign_jwt(claims, private_key, alg):
    """A compact JWS of claims, with the header Keycloak writes (alg, typ, kid)."""
    header = {"alg": alg, "typ": "JWT", "kid": key_id(private_key.public_key())}
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = SIGNING_ALGORITHMS[alg].sign(private_key, signing_input.encode("ascii"))
    return signing_input + "." + b64url(signature)


def key_path(key_file, alg):
    """Where the key for alg is kept: key_file itself for RS256 (the file the tests and `make run`
    have always read), and beside it, named after the algorithm, for the others
    (idp-key.pem -> idp-key.es256.pem). None: keys live in memory only."""
    if not key_file or alg == "RS256":
        return key_file
    root, extension = os.path.splitext(key_file)
    return f"{root}.{alg.lower()}{extension or '.pem'}"


def write_key(path, private_key):
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomically(path, pem)


def load_or_create_key(path, alg="RS256"):
    """The key for alg from path, or a new one (written to path if given)."""
    algorithm = SIGNING_ALGORITHMS[alg]
    if path and os.path.exists(path):
        with open(path, "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None)
        if not algorithm.holds(key):
            raise ValueError(f"{path} holds a {type(key).__name__}, not a key for {alg}")
        return key
    key = algorithm.generate()
    if path:
        write_key(path, key)
    return key


def write_atomically(path, data):
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def user_id(realm_name, username):
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"devidp:{realm_name}:{username}"))


def realm_from_keycloak_export(export):
    """Realm data from a Keycloak realm export (the JSON of `kc.sh export` and `--import-realm`):
    enabled users with their password and roles, enabled clients with their access-token algorithm,
    service-account roles, and the algorithms the realm's key providers have keys for."""
    name = export["realm"]
    # Keycloak's own composite and built-in roles; the tokens here add them by themselves.
    builtin = {f"default-roles-{name}", "offline_access", "uma_authorization"}
    users, service_accounts = {}, {}
    for user in export.get("users", []):
        if not user.get("enabled", True):
            continue
        roles = {
            "realmRoles": [role for role in user.get("realmRoles", []) if role not in builtin],
            "clientRoles": user.get("clientRoles", {}),
        }
        if user.get("serviceAccountClientId"):
            service_accounts[user["serviceAccountClientId"]] = roles
            continue
        passwords = [c.get("value") for c in user.get("credentials", []) if c.get("type") == "password"]
        users[user["username"]] = {
            # No plain password in the export (a hashed one): the user cannot sign in here.
            "password": passwords[0] if passwords else None,
            "firstName": user.get("firstName", ""),
            "lastName": user.get("lastName", ""),
            "email": user.get("email", ""),
            **roles,
        }
    clients = {}
    for client in export.get("clients", []):
        if not client.get("enabled", True):
            continue
        entry = {
            "publicClient": client.get("publicClient", False),
            "directAccessGrants": client.get("directAccessGrantsEnabled", False),
        }
        if "secret" in client:
            entry["secret"] = client["secret"]
        if client.get("serviceAccountsEnabled"):
            entry["serviceAccount"] = service_accounts.get(client["clientId"], {"realmRoles": [], "clientRoles": {}})
        # Clients → Advanced → "Access token signature algorithm"; empty means the realm's default.
        algorithm = client.get("attributes", {}).get("access.token.signed.response.alg")
        if algorithm:
            entry["accessTokenSignatureAlgorithm"] = algorithm
        # Clients → Advanced → "OAuth 2.0 Mutual TLS Certificate Bound Access Tokens Enabled".
        if client.get("attributes", {}).get("tls.client.certificate.bound.access.tokens") == "true":
            entry["certificateBoundTokens"] = True
        # Clients → Advanced → "Require DPoP bound tokens".
        if client.get("attributes", {}).get("dpop.bound.access.tokens") == "true":
            entry["dpopBoundTokens"] = True
        if client.get("attributes", {}).get("dev.opaque.access.tokens") == "true":
            entry["opaqueAccessTokens"] = True
        # Clients → the client → Client scopes → dedicated: its own mappers (an Audience mapper is
        # how Keycloak puts an API in `aud`), and the client scopes assigned to it.
        entry["audiences"] = mapper_audiences(client.get("protocolMappers"))
        for field in ("defaultClientScopes", "optionalClientScopes"):
            if field in client:
                entry[field] = list(client[field])
        clients[client["clientId"]] = entry
    realm = {
        "realm": name,
        "signatureAlgorithms": key_provider_algorithms(export),
        "defaultSignatureAlgorithm": export.get("defaultSignatureAlgorithm") or "RS256",
        "users": users,
        "clients": clients,
    }
    if export.get("clientScopes"):
        realm["clientScopes"] = client_scopes_from_export(export)
    for field in ("defaultDefaultClientScopes", "defaultOptionalClientScopes"):
        if field in export:
            realm[field] = list(export[field])
    return realm


KEY_PROVIDER_TYPE = "org.keycloak.keys.KeyProvider"
ECDSA_CURVE_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


def key_provider_algorithms(export):
    """The signature algorithms the export's key providers (`components` →
    org.keycloak.keys.KeyProvider) have active keys for, in their order.

    As Keycloak's import does: an export without any key provider gets Keycloak's defaults, whose
    only signing key is RS256. Providers of other keys (hmac-generated, aes-generated,
    rsa-enc-generated) sign no access token a resource server verifies, and are not signing keys here.
    """
    providers = export.get("components", {}).get(KEY_PROVIDER_TYPE)
    if not providers:
        return ["RS256"]
    algorithms = []
    for provider in providers:
        config = {name: values[0] for name, values in provider.get("config", {}).items() if values}
        if config.get("enabled", "true") == "false" or config.get("active", "true") == "false":
            continue
        provider_id = provider.get("providerId")
        if provider_id == "rsa-generated":
            algorithm = config.get("algorithm", "RS256")
        elif provider_id == "ecdsa-generated":
            algorithm = ECDSA_CURVE_ALGORITHMS.get(config.get("ecdsaEllipticCurveKey", "P-256"))
        elif provider_id == "eddsa-generated":
            curve = config.get("eddsaEllipticCurveKey", "Ed25519")
            algorithm = "EdDSA" if curve == "Ed25519" else f"EdDSA with {curve}"
        else:
            continue
        if algorithm not in SIGNING_ALGORITHMS:
            raise ValueError(f"key provider {provider.get('name', provider_id)!r}: devidp signs with "
                             f"{', '.join(SIGNING_ALGORITHMS)}, not {algorithm}")
        if algorithm not in algorithms:
            algorithms.append(algorithm)
    return algorithms


class Realm:
    """Users, clients and the Keycloak-shaped access tokens of one realm."""

    def __init__(self, data, issuer, token_lifetime):
        self.name = data["realm"]
        self.users = data["users"]
        self.clients = data["clients"]
        self.scopes = {**BUILTIN_SCOPES, **data.get("clientScopes", {})}
        self.default_scopes = data.get("defaultDefaultClientScopes", DEFAULT_CLIENT_SCOPES)
        self.optional_scopes = data.get("defaultOptionalClientScopes", OPTIONAL_CLIENT_SCOPES)
        self.issuer = issuer
        self.token_lifetime = token_lifetime
        # A realm without key providers of its own has Keycloak's defaults: one RS256 signing key.
        self.algorithms = list(data.get("signatureAlgorithms") or ["RS256"])
        self.default_algorithm = data.get("defaultSignatureAlgorithm") or "RS256"
        unknown = [alg for alg in self.algorithms if alg not in SIGNING_ALGORITHMS]
        if unknown:
            raise ValueError(f"realm {self.name}: no signing with {', '.join(unknown)} here "
                             f"(devidp signs with {', '.join(SIGNING_ALGORITHMS)})")
        # Keycloak refuses to issue a token it has no active key for; refusing the realm at start
        # says so before the first token request does.
        wanted = {"the realm default": self.default_algorithm}
        wanted.update({f"client {name}": self.access_token_algorithm(name) for name in self.clients})
        for who, alg in wanted.items():
            if alg not in self.algorithms:
                raise ValueError(f"realm {self.name}: {who} signs with {alg}, but the realm has "
                                 f"keys for {', '.join(self.algorithms)} only")

    def access_token_algorithm(self, client_id):
        """What the client's access tokens are signed with: its own algorithm (Keycloak's client
        attribute access.token.signed.response.alg), or the realm's default."""
        return self.clients[client_id].get("accessTokenSignatureAlgorithm") or self.default_algorithm

    def authenticate_client(self, client_id, secret):
        client = self.clients.get(client_id or "")
        if client is None:
            raise OAuthError(401, "invalid_client", "Invalid client or Invalid client credentials")
        if not client.get("publicClient") and secret != client.get("secret"):
            raise OAuthError(401, "invalid_client", "Invalid client or Invalid client credentials")
        return client

    def client_scopes(self, client_id, requested=""):
        """The client scopes a token request gets, as Keycloak decides them: the client's default
        scopes, plus those of its optional scopes the request's `scope` names."""
        client = self.clients[client_id]
        scopes = list(client.get("defaultClientScopes", self.default_scopes))
        optional = client.get("optionalClientScopes", self.optional_scopes)
        for name in requested.split():
            if name == "openid" or name in scopes:
                continue
            if name not in optional:
                # As Keycloak: a scope the client does not have is refused, not ignored.
                raise OAuthError(400, "invalid_scope", "Invalid scopes: " + requested)
            scopes.append(name)
        return [name for name in scopes if name in self.scopes]

    def password_grant(self, client_id, client, username, password, requested_scope=""):
        if not client.get("directAccessGrants"):
            raise OAuthError(400, "unauthorized_client", "Client not allowed for direct access grants")
        user = self.users.get(username or "")
        if user is None or password != user.get("password"):
            raise OAuthError(401, "invalid_grant", "Invalid user credentials")
        claims, wanted = self._base_claims(client_id, username, user.get("realmRoles", []),
                                           user.get("clientRoles", {}), requested_scope)
        session = str(uuid.uuid4())
        claims.update({"session_state": session, "sid": session})
        if "email" in wanted:
            claims["email"] = user.get("email", "")
        if "profile" in wanted:
            claims.update({
                "name": f"{user.get('firstName', '')} {user.get('lastName', '')}".strip(),
                "preferred_username": username,
                "given_name": user.get("firstName", ""),
                "family_name": user.get("lastName", ""),
            })
        return claims

    def client_credentials_grant(self, client_id, client, client_address, requested_scope=""):
        if client.get("publicClient"):
            raise OAuthError(400, "unauthorized_client", "Public client not allowed to retrieve service account")
        account = client.get("serviceAccount")
        if account is None:
            raise OAuthError(400, "unauthorized_client", "Client not enabled to retrieve service account")
        username = f"service-account-{client_id}"
        claims, wanted = self._base_claims(client_id, username, account.get("realmRoles", []),
                                           account.get("clientRoles", {}), requested_scope)
        claims.update({"clientHost": client_address, "clientAddress": client_address, "clientId": client_id})
        if "profile" in wanted:
            claims["preferred_username"] = username
        return claims

    def _base_claims(self, client_id, username, realm_roles, client_roles, requested_scope):
        """The claims every access token of this client has, from the client scopes the request
        gets (Keycloak's protocol mappers): roles only with the `roles` scope, `aud` only from
        Audience mappers and Audience Resolve (every other client the user has a role of, which
        is how `account` gets in), `scope` the names of the scopes that go into it."""
        now = int(time.time())
        granted = self.client_scopes(client_id, requested_scope)
        scopes = [self.scopes[name] for name in granted]
        kinds = {scope.get("claims") for scope in scopes}
        resource_access = {client: {"roles": list(roles)} for client, roles in client_roles.items() if roles}
        resource_access["account"] = {"roles": list(ACCOUNT_ROLES)}
        default_roles = [role.format(realm=self.name) for role in DEFAULT_REALM_ROLES]
        audiences = list(self.clients[client_id].get("audiences", []))
        for scope in scopes:
            audiences += [a for a in scope.get("audiences", []) if a not in audiences]
        if any(scope.get("audienceResolve") for scope in scopes):
            audiences += [c for c in resource_access if c != client_id and c not in audiences]
        names = [name for name in granted if self.scopes[name].get("includeInTokenScope")]
        if "openid" in requested_scope.split():
            names.insert(0, "openid")
        claims = {
            "exp": now + self.token_lifetime,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "iss": self.issuer,
            "sub": user_id(self.name, username),
            "typ": "Bearer",
            "azp": client_id,
            "scope": " ".join(names),
        }
        # One audience is a string in Keycloak's tokens, none is no claim.
        if audiences:
            claims["aud"] = audiences[0] if len(audiences) == 1 else audiences
        if "acr" in kinds:
            claims["acr"] = "1"
        if "web-origins" in kinds:
            claims["allowed-origins"] = ["*"]
        if "roles" in kinds:
            claims["realm_access"] = {"roles": default_roles + list(realm_roles)}
            claims["resource_access"] = resource_access
        if "basic" in kinds and username != f"service-account-{client_id}":
            claims["auth_time"] = now
        if "email" in kinds:
            claims["email_verified"] = username != f"service-account-{client_id}"
        return claims, kinds


class IdpState:
    """Keys, request counters and test switches shared by all request handlers."""

    def __init__(self, realm, key_file, test_endpoints):
        self.realm = realm
        self.key_file = key_file
        self.test_endpoints = test_endpoints
        # The active signing key of each of the realm's algorithms, each persisted in its own file.
        self.signing_keys = {alg: load_or_create_key(key_path(key_file, alg), alg) for alg in realm.algorithms}
        # Keys rotated out but still published for verification (Keycloak's passive keys).
        self.passive_keys = {alg: [] for alg in realm.algorithms}
        self.encryption_key = new_rsa_key()
        self.hits = {"certs": 0, "discovery": 0, "token": 0, "introspect": 0}
        # Opaque tokens issued (the reference -> its claims), and how introspection answers
        # (a test may make it fail or stall, as certs_mode does for the keys).
        self.opaque_tokens = {}
        self.introspection_mode = {"status": 200, "delay": 0.0}
        self.certs_mode = dict(CERTS_MODE_DEFAULTS)
        self.lock = threading.Lock()

    def count(self, endpoint):
        with self.lock:
            self.hits[endpoint] += 1

    def jwks(self):
        with self.lock:
            published = [(alg, key) for alg in self.realm.algorithms
                         for key in [self.signing_keys[alg], *self.passive_keys[alg]]]
        signing = [jwk(key, "sig", alg) for alg, key in published]
        return {"keys": [*signing, jwk(self.encryption_key, "enc", "RSA-OAEP")]}

    def sign(self, claims, alg):
        with self.lock:
            signing_key = self.signing_keys[alg]
        return sign_jwt(claims, signing_key, alg)

    def rotate(self, keep_previous=False, alg="RS256"):
        """A new active signing key for alg. The old one is dropped, or with keep_previous
        published as a passive key (as Keycloak does during a rotation) so tokens it signed still
        verify."""
        if alg not in self.signing_keys:
            raise ValueError(f"the realm has no {alg} key to rotate")
        key = SIGNING_ALGORITHMS[alg].generate()
        path = key_path(self.key_file, alg)
        if path:
            write_key(path, key)
        with self.lock:
            previous = self.signing_keys[alg]
            self.passive_keys[alg] = [previous, *self.passive_keys[alg]] if keep_previous else []
            self.signing_keys[alg] = key
        return key_id(key.public_key())

    def set_certs_mode(self, changes):
        unknown = set(changes) - set(CERTS_MODE_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown certs-mode fields: {sorted(unknown)}")
        with self.lock:
            self.certs_mode = {**CERTS_MODE_DEFAULTS, **changes}
            return dict(self.certs_mode)


class Handler(BaseHTTPRequestHandler):
    """Routes /realms/<realm>/... (and the same under /auth, Keycloak < 17) and the optional
    /_test/... endpoints."""

    protocol_version = "HTTP/1.1"
    server_version = "devidp"
    state: IdpState = None

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method):
        body = self._read_body()
        path = urlsplit(self.path).path
        if path.startswith("/_test/") and self.state.test_endpoints:
            return self._test_endpoint(method, path, body)
        parts = path.split("/")
        # Keycloak before 17 (on WildFly) served every realm under /auth, and named itself so in
        # `iss`: tokens fetched there say .../auth/realms/<realm>, as guides of that time show.
        self.legacy = len(parts) > 1 and parts[1] == "auth"
        if self.legacy:
            parts = parts[:1] + parts[2:]
        if len(parts) < 4 or parts[1] != "realms" or parts[2] != self.state.realm.name:
            return self._send_json(404, {"error": "Realm does not exist"})
        route = "/".join(parts[3:])
        if method == "GET" and route == ".well-known/openid-configuration":
            self.state.count("discovery")
            return self._send_json(200, self._discovery())
        if method == "GET" and route == "protocol/openid-connect/certs":
            self.state.count("certs")
            return self._certs()
        if method == "POST" and route == "protocol/openid-connect/token":
            self.state.count("token")
            return self._token(body)
        if method == "POST" and route == "protocol/openid-connect/token/introspect":
            self.state.count("introspect")
            return self._introspect(body)
        if method == "POST" and route == "protocol/openid-connect/revoke":
            return self._revoke(body)
        return self._send_json(404, {"error": "Unable to find matching target resource method"})

    def request_issuer(self):
        """The realm's issuer as this request addressed it: with /auth for the legacy prefix."""
        issuer = self.state.realm.issuer
        if not getattr(self, "legacy", False):
            return issuer
        scheme, _, rest = issuer.partition("://")
        host, _, path = rest.partition("/")
        return f"{scheme}://{host}/auth/{path}"

    def _discovery(self):
        issuer = self.request_issuer()
        return {
            "issuer": issuer,
            "token_endpoint": f"{issuer}/protocol/openid-connect/token",
            "introspection_endpoint": f"{issuer}/protocol/openid-connect/token/introspect",
            "revocation_endpoint": f"{issuer}/protocol/openid-connect/revoke",
            "jwks_uri": f"{issuer}/protocol/openid-connect/certs",
            "grant_types_supported": ["password", "client_credentials"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            # The algorithms of the keys /certs serves (Keycloak lists every one it could sign with).
            "id_token_signing_alg_values_supported": list(self.state.realm.algorithms),
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            # RFC 9449 §5.1: the proof algorithms its token endpoint takes.
            "dpop_signing_alg_values_supported": ["ES256", "RS256", "PS256", "EdDSA"],
            "scopes_supported": ["openid", *sorted(name for name, scope in self.state.realm.scopes.items()
                                                   if scope.get("includeInTokenScope"))],
            "claims_supported": ["aud", "sub", "iss", "auth_time", "name", "given_name",
                                 "family_name", "preferred_username", "email", "acr"],
        }

    def _certs(self):
        mode = self.state.certs_mode
        if mode["delay"]:
            time.sleep(mode["delay"])
        headers = mode["headers"] or {}
        if mode["body"] is not None:
            return self._send(mode["status"], mode["body"].encode(), "application/json", headers)
        if mode["status"] != 200:
            return self._send_json(mode["status"], {"error": "unknown_error"}, headers)
        # Keycloak's own header; a test may replace it (e.g. with a max-age).
        return self._send_json(200, self.state.jwks(), {"Cache-Control": "no-cache", **headers})

    def _token(self, body):
        try:
            form = {name: values[0] for name, values in parse_qs(body.decode()).items()}
            client_id, secret = self._client_credentials(form)
            realm = self.state.realm
            grant_type = form.get("grant_type")
            if not grant_type:
                raise OAuthError(400, "invalid_request", "Missing form parameter: grant_type")
            if grant_type not in ("password", "client_credentials"):
                raise OAuthError(400, "unsupported_grant_type", "Unsupported grant_type")
            client = realm.authenticate_client(client_id, secret)
            requested = form.get("scope", "")
            if grant_type == "password":
                claims = realm.password_grant(client_id, client, form.get("username"), form.get("password"), requested)
            else:
                claims = realm.client_credentials_grant(client_id, client, self.client_address[0], requested)
            claims["iss"] = self.request_issuer()
            if client.get("certificateBoundTokens"):
                claims["cnf"] = {"x5t#S256": self._client_certificate_thumbprint()}
            jkt = self._dpop_thumbprint(client)
            if jkt:
                claims.setdefault("cnf", {})["jkt"] = jkt
            if client.get("opaqueAccessTokens"):
                access_token = b64url(os.urandom(24))
                with self.state.lock:
                    self.state.opaque_tokens[access_token] = claims
            else:
                access_token = self.state.sign(claims, realm.access_token_algorithm(client_id))
        except OAuthError as error:
            return self._send_json(error.status, {"error": error.error, "error_description": error.description})
        except (UnicodeDecodeError, binascii.Error, ValueError):
            return self._send_json(400, {"error": "invalid_request", "error_description": "Malformed request"})
        response = {
            "access_token": access_token,
            "expires_in": claims["exp"] - claims["iat"],
            "refresh_expires_in": 0,
            "token_type": "DPoP" if jkt else "Bearer",
            "not-before-policy": 0,
            "scope": claims["scope"],
        }
        if "session_state" in claims:
            response["session_state"] = claims["session_state"]
        return self._send_json(200, response, {"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _client_certificate_thumbprint(self):
        """RFC 8705's x5t#S256 of the client certificate of this TLS connection, as Keycloak binds
        a token for a client with certificate-bound tokens; refused as Keycloak refuses it without one."""
        getpeercert = getattr(self.connection, "getpeercert", None)
        der = getpeercert(binary_form=True) if getpeercert else None
        if not der:
            raise OAuthError(400, "invalid_request", "Client Certification missing for MTLS HoK Token Binding")
        return b64url(hashlib.sha256(der).digest())

    def _dpop_thumbprint(self, client):
        """The RFC 7638 thumbprint of the key of this token request's DPoP proof (RFC 9449 §5), the
        token's cnf.jkt; None without a proof, which a client with dpopBoundTokens is refused."""
        proofs = self.headers.get_all("DPoP") or []
        if not proofs:
            if client.get("dpopBoundTokens"):
                raise OAuthError(400, "invalid_request", "DPoP proof is missing")
            return None
        if len(proofs) > 1:
            raise OAuthError(400, "invalid_dpop_proof", "Multiple DPoP headers")
        scheme = "https" if hasattr(self.connection, "getpeercert") else "http"
        url = f"{scheme}://{self.headers.get('Host', '')}{urlsplit(self.path).path}"
        try:
            return verify_dpop_proof(proofs[0], "POST", url, time.time())
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, InvalidSignature) as error:
            raise OAuthError(400, "invalid_dpop_proof", f"DPoP proof is invalid: {error}") from None

    def _confidential_client(self, body):
        """The form of an introspection or revocation request once its client authenticated as
        a confidential client (Keycloak refuses public clients there), or the error answered."""
        try:
            form = {name: values[0] for name, values in parse_qs(body.decode()).items()}
            client_id, secret = self._client_credentials(form)
            client = self.state.realm.authenticate_client(client_id, secret)
            if client.get("publicClient"):
                raise OAuthError(401, "invalid_client", "Public client not allowed")
            return form, None
        except OAuthError as error:
            return None, (error.status, {"error": error.error, "error_description": error.description})
        except (UnicodeDecodeError, binascii.Error, ValueError):
            return None, (400, {"error": "invalid_request"})

    def _introspect(self, body):
        """RFC 7662, as Keycloak answers: the token's claims with active: true, or only
        active: false for a token it does not know (or that expired or was revoked)."""
        mode = self.state.introspection_mode
        if mode["delay"]:
            time.sleep(mode["delay"])
        if mode["status"] != 200:
            return self._send_json(mode["status"], {"error": "unknown_error"})
        form, refusal = self._confidential_client(body)
        if refusal:
            return self._send_json(*refusal)
        with self.state.lock:
            claims = self.state.opaque_tokens.get(form.get("token", ""))
        if claims is None or claims["exp"] < time.time():
            return self._send_json(200, {"active": False})
        answer = {**claims, "active": True, "client_id": claims.get("azp"), "token_type": "Bearer"}
        if "preferred_username" in claims:
            answer["username"] = claims["preferred_username"]
        return self._send_json(200, answer)

    def _revoke(self, body):
        """RFC 7009: forgets an opaque token; 200 whether it knew it or not."""
        form, refusal = self._confidential_client(body)
        if refusal:
            return self._send_json(*refusal)
        with self.state.lock:
            self.state.opaque_tokens.pop(form.get("token", ""), None)
        return self._send(200, b"", "application/json")

    def _client_credentials(self, form):
        authorization = self.headers.get("Authorization", "")
        if authorization[:6].lower() == "basic ":
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            client_id, _, secret = decoded.partition(":")
            return unquote(client_id), unquote(secret)
        return form.get("client_id"), form.get("client_secret")

    def _test_endpoint(self, method, path, body):
        if method == "GET" and path == "/_test/hits":
            with self.state.lock:
                return self._send_json(200, dict(self.state.hits))
        if method == "POST" and path == "/_test/certs-mode":
            try:
                changes = json.loads(body or b"{}")
                return self._send_json(200, self.state.set_certs_mode(changes))
            except (ValueError, TypeError) as error:
                return self._send_json(400, {"error": str(error)})
        if method == "POST" and path == "/_test/introspection-mode":
            try:
                changes = json.loads(body or b"{}")
                mode = {"status": int(changes.get("status", 200)), "delay": float(changes.get("delay", 0))}
            except (ValueError, TypeError, AttributeError) as error:
                return self._send_json(400, {"error": str(error)})
            with self.state.lock:
                self.state.introspection_mode = mode
            return self._send_json(200, mode)
        if method == "POST" and path == "/_test/rotate":
            options = json.loads(body or b"{}") if body else {}
            alg = options.get("alg", "RS256")
            try:
                kid = self.state.rotate(bool(options.get("keepPrevious")), alg)
            except ValueError as error:
                return self._send_json(400, {"error": str(error)})
            return self._send_json(200, {"kid": kid, "alg": alg})
        return self._send_json(404, {"error": "unknown test endpoint"})

    def _read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, status, document, headers=None):
        self._send(status, json.dumps(document).encode(), "application/json", headers)

    def _send(self, status, payload, content_type, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):
        stamp = time.strftime("%H:%M:%S")
        sys.stderr.write(f"devidp {stamp} {self.client_address[0]} {format % args}\n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8180, help="0 picks a free port")
    parser.add_argument("--key-file",
                        help="the RS256 private key PEM, generated and written if missing; the keys of the "
                             "other algorithms are kept beside it (KEY.es256.pem, KEY.ps256.pem, ...)")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--token-lifetime", type=int, default=300, help="access token lifetime, seconds")
    parser.add_argument("--realm-file",
                        help="realm replacing the built-in shop realm: a Keycloak realm export, or this tool's JSON shape")
    parser.add_argument("--test-endpoints", action="store_true", help="enable /_test/* endpoints")
    parser.add_argument("--tls-port", type=int,
                        help="also serve HTTPS here (0 picks a free port), asking for a client certificate: the "
                             "token endpoint of a client with certificate-bound tokens needs one")
    parser.add_argument("--tls-cert", help="the HTTPS server certificate (PEM), with --tls-port")
    parser.add_argument("--tls-key", help="its private key (PEM)")
    parser.add_argument("--tls-client-ca", help="the CA that client certificates must chain to (PEM)")
    parser.add_argument("--tls-port-file", help="write the HTTPS port here once listening")
    return parser.parse_args(argv)


def serve_tls(args):
    """The same handler over HTTPS, in a thread: a client certificate is asked for, not required
    (only the token endpoint of a certificate-bound client refuses to go without)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    context.load_verify_locations(args.tls_client_ca)
    context.verify_mode = ssl.CERT_OPTIONAL
    server = ThreadingHTTPServer((args.host, args.tls_port), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    if args.tls_port_file:
        write_atomically(args.tls_port_file, str(server.server_address[1]).encode())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv=None):
    args = parse_args(argv)
    realm_data = DEFAULT_REALM
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    # A realm the IdP cannot serve (an algorithm without a key, a key file of the wrong type) stops
    # it here, with the reason, rather than at the first token request.
    try:
        if args.realm_file:
            with open(args.realm_file, encoding="utf-8") as handle:
                realm_data = json.load(handle)
            if isinstance(realm_data.get("users"), list):
                realm_data = realm_from_keycloak_export(realm_data)
        issuer = f"http://{args.host}:{port}/realms/{realm_data['realm']}"
        Handler.state = IdpState(Realm(realm_data, issuer, args.token_lifetime), args.key_file, args.test_endpoints)
    except ValueError as error:
        server.server_close()
        sys.exit(f"devidp: {error}")
    tls_server = serve_tls(args) if args.tls_port is not None else None
    if args.port_file:
        write_atomically(args.port_file, str(port).encode())
    sys.stderr.write(f"devidp listening, issuer {issuer}\n")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
