"""Signing keys for every JWS algorithm the filter verifies (RFC 7518 §3, RFC 8037), and their
JWKs (RFC 7517, RFC 7518 §6, RFC 8037 §2), built with `cryptography`, never with the code under
test."""

import functools

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .tokens import apply_overrides, b64url, b64url_decode

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")

# ES*: the curve, its JWK name, and the byte length of a coordinate, of r and of s (RFC 7518 §3.4, §6.2.1.2).
CURVES = {
    "ES256": (ec.SECP256R1, "P-256", 32),
    "ES384": (ec.SECP384R1, "P-384", 48),
    "ES512": (ec.SECP521R1, "P-521", 66),
}


def family(alg):
    """The JWK key type an algorithm is verified with: RSA, EC or OKP."""
    if alg[:2] in ("RS", "PS"):
        return "RSA"
    if alg in CURVES:
        return "EC"
    if alg == "EdDSA":
        return "OKP"
    raise ValueError(f"not a signature algorithm the filter verifies: {alg}")


def generate(alg, rsa_bits=2048):
    """A new private key for alg (RSA of rsa_bits for RS*/PS*, the alg's curve for ES*, Ed25519)."""
    kind = family(alg)
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    if kind == "EC":
        return ec.generate_private_key(CURVES[alg][0]())
    return ed25519.Ed25519PrivateKey.generate()


@functools.lru_cache(maxsize=None)
def signing_key(alg, index=0):
    """The index-th key for alg, the same one for the whole process: index 0 is the one a test
    publishes, index 1 a key of the same type nobody publishes (a "wrong key")."""
    return generate(alg)


def b64url_uint(number, length=None):
    """A JWK integer (RFC 7518 §2 Base64urlUInt): big-endian, minimal length unless length is
    given (EC coordinates are always the full coordinate length, §6.2.1.2)."""
    size = length if length is not None else max(1, (number.bit_length() + 7) // 8)
    return b64url(number.to_bytes(size, "big"))


def curve_name(public_key):
    """The JWK crv of an EC public key."""
    return next(name for curve, name, _ in CURVES.values() if isinstance(public_key.curve, curve))


def coordinate_size(public_key):
    return next(size for curve, _, size in CURVES.values() if isinstance(public_key.curve, curve))


def jwk(key, *, kid=None, alg=None, use=None, **fields):
    """The public JWK of a private or public RSA, EC (P-256/384/521) or Ed25519 key: RSA n/e, EC
    crv/x/y with fixed-length coordinates, OKP crv/x. kid, alg and use are added when given;
    fields adds or, with None, removes members (to build broken keys)."""
    public = key.public_key() if hasattr(key, "public_key") else key
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        document = {"kty": "RSA", "n": b64url_uint(numbers.n), "e": b64url_uint(numbers.e)}
    elif isinstance(public, ec.EllipticCurvePublicKey):
        numbers, size = public.public_numbers(), coordinate_size(public)
        document = {"kty": "EC", "crv": curve_name(public),
                    "x": b64url_uint(numbers.x, size), "y": b64url_uint(numbers.y, size)}
    elif isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        document = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    else:
        raise TypeError(f"no JWK for {type(public).__name__}")
    for name, value in (("kid", kid), ("alg", alg), ("use", use)):
        if value is not None:
            document[name] = value
    return apply_overrides(document, fields)


def public_key_from_jwk(document):
    """The cryptography public key of an RSA, EC or OKP (Ed25519) JWK; raises ValueError for one
    cryptography refuses (an EC point not on its curve, for example)."""
    number = lambda name: int.from_bytes(b64url_decode(document[name]), "big")  # noqa: E731
    if document["kty"] == "RSA":
        return rsa.RSAPublicNumbers(number("e"), number("n")).public_key()
    if document["kty"] == "EC":
        curve = next(curve for curve, name, _ in CURVES.values() if name == document["crv"])
        return ec.EllipticCurvePublicNumbers(number("x"), number("y"), curve()).public_key()
    if document["kty"] == "OKP" and document["crv"] == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(document["x"]))
    raise ValueError(f"unsupported JWK: kty {document['kty']!r}")
