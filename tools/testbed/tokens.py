"""JWT encoding and minting: tokens shaped like the dev IdP's (a Keycloak realm), signed with its key
or any other, and tokens assembled by hand from arbitrary parts."""

import base64
import functools
import json
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from devidp import DEFAULT_REALM, user_id  # the IdP's realm data is the single source


def b64url(data):
    """Base64url without padding, as JWTs use it."""
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def json_segment(document):
    return b64url(json.dumps(document, separators=(",", ":")))


def raw_token(header, payload, signature=b""):
    """Assemble a token from parts: dicts are JSON-encoded, bytes base64url-encoded, str used verbatim."""
    def segment(part):
        if isinstance(part, (dict, list)):
            return json_segment(part)
        if isinstance(part, bytes):
            return b64url(part)
        return part
    return ".".join(segment(part) for part in (header, payload, signature))


def sign_rs256(signing_input, private_key):
    return private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())


def token_payload(token):
    """The decoded payload of a compact JWT."""
    return json.loads(b64url_decode(token.split(".")[1]))


def sub(username):
    """The subject (sub claim) the IdP gives a built-in user."""
    return user_id(DEFAULT_REALM["realm"], username)


def keycloak_payload(issuer, username, client_id="shop-web"):
    """Claims shaped like a Keycloak access token from a password grant for a built-in user."""
    user = DEFAULT_REALM["users"][username]
    now = int(time.time())
    return {
        "exp": now + 300,
        "iat": now,
        "auth_time": now,
        "jti": f"test-{time.monotonic_ns()}",
        "iss": issuer,
        "aud": ["shop", "account"],
        "sub": user_id(DEFAULT_REALM["realm"], username),
        "typ": "Bearer",
        "azp": client_id,
        "session_state": "test-session",
        "acr": "1",
        "allowed-origins": ["*"],
        "realm_access": {"roles": ["default-roles-shop", "offline_access"] + user["realmRoles"]},
        "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
        "scope": "openid profile email",
        "email_verified": True,
        "name": f"{user['firstName']} {user['lastName']}",
        "preferred_username": username,
        "given_name": user["firstName"],
        "family_name": user["lastName"],
        "email": user["email"],
    }


def apply_overrides(document, overrides):
    """Copy of document with overrides applied; an override of None deletes the entry."""
    result = dict(document)
    for name, value in overrides.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def mint(idp, user="alice", *, header=None, key=None, claims=None, **overrides):
    """An RS256 token for a built-in user, signed with the IdP key unless key is given.

    claims and keyword overrides replace payload claims (None deletes one; claims allows names
    such as "allowed-origins"); header replaces header fields the same way.
    """
    payload = apply_overrides(keycloak_payload(idp.issuer, user), {**(claims or {}), **overrides})
    head = apply_overrides({"alg": "RS256", "typ": "JWT", "kid": idp.kid}, header or {})
    signing_input = f"{json_segment(head)}.{json_segment(payload)}"
    return f"{signing_input}.{b64url(sign_rs256(signing_input, key or idp.private_key))}"


@functools.lru_cache(maxsize=None)
def other_key():
    """An RSA key the IdP does not know (one per process)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
