"""JWT encoding and minting: tokens shaped like the dev IdP's (a Keycloak realm), signed with its key
or any other, with any JWS algorithm the filter verifies (RFC 7518 §3: RS*, PS*, ES*; RFC 8037:
EdDSA), and tokens assembled by hand from arbitrary parts."""

import base64
import functools
import json
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

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


# The hash of RS*, PS* and ES*, by the number in the algorithm's name.
HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def hash_for(alg):
    """The hash (an instance) of an RS*, PS* or ES* algorithm."""
    return HASHES[alg[-3:]]()


def ecdsa_size(key):
    """Bytes of r and of s in a JOSE ECDSA signature by this EC key: 32, 48 or 66 (RFC 7518 §3.4)."""
    return (key.curve.key_size + 7) // 8


def der_to_raw(der, size):
    """A DER ECDSA signature (what cryptography produces) as JOSE's r || s, each left-padded to size."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def raw_to_der(raw):
    """A JOSE r || s signature as DER, the form JOSE does not use (for tests that send it anyway)."""
    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


def sign(alg, signing_input, private_key, *, ecdsa_der=False, pss_salt_length=None):
    """The JWS signature of signing_input (str or bytes) by private_key with alg:

    RS256/384/512  RSASSA-PKCS1-v1_5 with SHA-2 (RFC 7518 §3.3)
    PS256/384/512  RSASSA-PSS, MGF1 with the same hash, salt as long as the hash (§3.5), unless
                   pss_salt_length says otherwise
    ES256/384/512  ECDSA, as raw r || s of the key's curve size (§3.4), or the DER that
                   cryptography produces with ecdsa_der
    EdDSA          Ed25519 (RFC 8037 §3.1)

    The hash comes from alg and the ECDSA size from the key, so a key of one curve can sign "as"
    another algorithm of its family (for algorithm-confusion tests)."""
    data = signing_input.encode("ascii") if isinstance(signing_input, str) else signing_input
    if alg[:2] == "RS":
        return private_key.sign(data, padding.PKCS1v15(), hash_for(alg))
    if alg[:2] == "PS":
        digest = hash_for(alg)
        salt = digest.digest_size if pss_salt_length is None else pss_salt_length
        return private_key.sign(data, padding.PSS(mgf=padding.MGF1(digest), salt_length=salt), digest)
    if alg[:2] == "ES":
        der = private_key.sign(data, ec.ECDSA(hash_for(alg)))
        return der if ecdsa_der else der_to_raw(der, ecdsa_size(private_key))
    if alg == "EdDSA":
        return private_key.sign(data)
    raise ValueError(f"cannot sign with {alg!r}")


def sign_rs256(signing_input, private_key):
    return sign("RS256", signing_input, private_key)


def jws(header, payload, private_key, *, sign_as=None, **options):
    """A compact JWS of header and payload (dicts, or exact JSON texts), signed with sign_as or the
    header's alg; options go to sign()."""
    head = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    body = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    signing_input = f"{b64url(head)}.{b64url(body)}"
    alg = sign_as or json.loads(head)["alg"]
    return f"{signing_input}.{b64url(sign(alg, signing_input, private_key, **options))}"


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


def mint_as(alg, private_key, issuer, user="alice", *, kid=None, header=None, claims=None, sign_as=None,
            **overrides):
    """A token for a built-in user of issuer, with alg in the header, signed with private_key (by
    sign_as instead of alg when given); kid goes in the header when given. header, claims and
    overrides change fields as in mint()."""
    payload = apply_overrides(keycloak_payload(issuer, user), {**(claims or {}), **overrides})
    head = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid is not None else {})}
    return jws(apply_overrides(head, header or {}), payload, private_key, sign_as=sign_as or alg)


@functools.lru_cache(maxsize=None)
def other_key():
    """An RSA key the IdP does not know (one per process)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
