"""A DPoP client (RFC 9449) for `make run`: gets a DPoP-bound token from the dev identity provider
(the realm's `shop-dpop` client, as Keycloak's "Require DPoP bound tokens") and calls the API
through Envoy with a fresh proof, then shows what jwt-authz refuses: the same proof again, the
token as a bearer token, and the token without a proof.

    .venv/bin/python examples/dpop/client.py            # against make run's ports
    .venv/bin/python examples/dpop/client.py --idp http://127.0.0.1:8180/realms/shop \
        --api http://127.0.0.1:8080/api/public/hello --user alice --password alice

Needs only `cryptography` (in the .venv `make run` creates). The key lives in memory: each run is
a new client key.
"""

import argparse
import base64
import hashlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class DpopKey:
    """The client's P-256 key: every proof is an ES256 JWS with the public key in its header."""

    def __init__(self):
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        numbers = self.private_key.public_key().public_numbers()
        self.jwk = {"kty": "EC", "crv": "P-256",
                    "x": b64url(numbers.x.to_bytes(32, "big")), "y": b64url(numbers.y.to_bytes(32, "big"))}

    def proof(self, method, url, access_token=None):
        """A proof for one request: its method and URL (no query), now, a new jti, and for an API
        call the hash of the access token (ath)."""
        scheme, netloc, path, _, _ = urllib.parse.urlsplit(url)
        claims = {"jti": str(uuid.uuid4()), "htm": method, "htu": f"{scheme}://{netloc}{path}", "iat": int(time.time())}
        if access_token:
            claims["ath"] = b64url(hashlib.sha256(access_token.encode()).digest())
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk}
        signing_input = ".".join(b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims))
        r, s = decode_dss_signature(self.private_key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def call(method, url, headers, body=None):
    """(status, WWW-Authenticate, body) of one request."""
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("WWW-Authenticate"), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("WWW-Authenticate"), error.read().decode()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idp", default="http://127.0.0.1:8180/realms/shop")
    parser.add_argument("--api", default="http://127.0.0.1:8080/api/public/hello")
    parser.add_argument("--client-id", default="shop-dpop")
    parser.add_argument("--user", default="alice")
    parser.add_argument("--password", default="alice")
    args = parser.parse_args(argv)

    key = DpopKey()
    token_url = f"{args.idp}/protocol/openid-connect/token"
    form = urllib.parse.urlencode({"grant_type": "password", "client_id": args.client_id,
                                   "username": args.user, "password": args.password}).encode()
    status, _, text = call("POST", token_url, {"DPoP": key.proof("POST", token_url),
                                                "Content-Type": "application/x-www-form-urlencoded"}, form)
    answer = json.loads(text)
    assert status == 200 and answer.get("token_type") == "DPoP", (status, answer)
    token = answer["access_token"]
    print(f"token: token_type {answer['token_type']}, bound to the key with thumbprint in cnf.jkt")

    results = {}
    proof = key.proof("GET", args.api, token)
    results["with a new proof"] = call("GET", args.api, {"Authorization": f"DPoP {token}", "DPoP": proof})
    results["the same proof again"] = call("GET", args.api, {"Authorization": f"DPoP {token}", "DPoP": proof})
    results["as a bearer token"] = call("GET", args.api, {"Authorization": f"Bearer {token}"})
    results["without a proof"] = call("GET", args.api, {"Authorization": f"DPoP {token}"})
    for name, (status, challenge, _) in results.items():
        print(f"{name:>22}: {status} {challenge or ''}")
    expected = {"with a new proof": 200, "the same proof again": 401, "as a bearer token": 401, "without a proof": 401}
    return 0 if all(results[name][0] == status for name, status in expected.items()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
