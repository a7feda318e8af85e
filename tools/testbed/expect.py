"""What the filter answers, and the checks the tests make of it: the error messages (the same as
Envoy's jwt_authn and rbac filters), the bearer header, and expect_allowed / _missing / _rejected /
_forbidden / _refused."""

import json

FORM = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
BASE64 = "Jwt is not correctly Base64url encoded"
JSON = "Jwt header or payload is not valid JSON"
ALG = "Jwt header [alg] is not allowed"
ISSUER = "Jwt issuer is not configured"
NO_EXP = "Jwt has no [exp] claim"
EXPIRED = "Jwt is expired"
NOT_YET = "Jwt not yet valid"
AUDIENCE = "Audiences in Jwt are not allowed"
KID = "Jwks doesn't have key to match kid or alg from Jwt"
VERIFY = "Jwt verification fails"
FETCH = "Jwks remote fetch is failed"
MISSING = "Jwt is missing"
DENIED = "RBAC: access denied"


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def realm(envoy, path, host=None):
    return f'Bearer realm="http://{host or f"127.0.0.1:{envoy.port}"}{path}"'


def expect_missing(envoy, response, path):
    assert response[0::2] == (401, MISSING) and response[1].get("www-authenticate") == realm(envoy, path), response


def expect_rejected(envoy, response, path, message):
    challenge = f'{realm(envoy, path)}, error="invalid_token", error_description="{message}"'
    assert (response[0], response[1].get("www-authenticate"), response[2]) == (401, challenge, message), response


def expect_forbidden(envoy, response, path):
    challenge = f'{realm(envoy, path)}, error="insufficient_scope"'
    assert (response[0], response[1].get("www-authenticate"), response[2]) == (403, challenge, DENIED), response


def expect_allowed(response):
    """The backend's echo of an allowed request."""
    status, headers, body = response
    assert (status, headers.get("x-backend")) == (200, "demo"), response
    return json.loads(body)


def expect_refused(envoy, fragments):
    """Envoy exited, or kept running without serving through the broken filter; its log says why."""
    log = envoy.log_text()
    for fragment in fragments:
        assert fragment in log, f"{fragment!r} not in log of {envoy!r}"
    if envoy.exit_code is None and envoy.port is not None:
        status = envoy.get("/healthz")[0]
        assert status >= 500, f"broken config still served /healthz with {status}"
    elif envoy.exit_code is not None:
        assert envoy.exit_code != 0
