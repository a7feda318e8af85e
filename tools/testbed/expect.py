"""What the filter answers, and the checks the tests make of it: the error messages (the same as
Envoy's jwt_authn and rbac filters), the bearer header, and expect_allowed / _missing / _rejected /
_forbidden / _refused; denial_reason and expect_denied_for read the reason code of a denial from
the filter's log line."""

import json
import re
import time

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

# The message of each 401 reason code (docs/operations.md) that the tests look for by code.
REASON_MESSAGES = {
    "jwt_alg_not_allowed": ALG,
    "jwks_kid_not_found": KID,
    "jwt_signature_invalid": VERIFY,
    "jwks_fetch_failed": FETCH,
}


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


def denial_reason(envoy, path, timeout=5.0):
    """The reason code in the filter's log line for the denial of a request for path (`denied
    <status> reason=<code> policy=<policy> method=… [request_id=…] [token_issuer=…]
    resource=http[s]://<host><path>`), waiting for the log, which Envoy flushes every 50 ms
    (start_envoy's log_flush_ms); None if there is none. Tests give each request a path of its own,
    so that the line is that request's."""
    line = re.compile(rf"denied \d{{3}} reason=(\w+) policy=\S+ (?:\S+ )*resource=https?://[^/\s]+{re.escape(path)}$", re.M)
    deadline = time.monotonic() + timeout
    while True:
        found = line.findall(envoy.log_text())
        if found or time.monotonic() > deadline:
            assert len(found) <= 1, f"{path} was denied {len(found)} times: give each request its own path"
            return found[0] if found else None
        time.sleep(0.01)


def expect_denied_for(envoy, response, path, reason):
    """A 401 for path with the message of reason (REASON_MESSAGES), and reason in its log line."""
    expect_rejected(envoy, response, path, REASON_MESSAGES[reason])
    assert denial_reason(envoy, path) == reason, (path, reason)
