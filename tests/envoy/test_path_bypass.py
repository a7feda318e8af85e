"""The known Istio/Envoy path-based authorization bypasses, replayed against jwt-authz in real Envoy
with Envoy's own path normalization turned off: the filter alone must hold.

Each case is the bulletin's trick (see the comments), sent byte for byte as the attacker would.
"Fails" means the request never reaches the backend: 401/403 from the policy, or 400 for a path
that cannot be made unambiguous.
"""

import socket

import pytest

from testbed.config import jwt_rule
from testbed.envoy import start_envoy
from testbed.expect import DENIED, bearer
from testbed.tokens import mint


def bypass_config(idp):
    return {
        "jwtRules": [jwt_rule(idp)],
        "tokenRequirements": [
            # CVE-2020-8595 was Istio's exact-path JWT trigger rule: /secure needs a token.
            {"name": "secure-needs-token", "match": {"paths": ["/secure"]}, "issuers": [idp.issuer]},
        ],
        "policies": [
            # CVE-2021-31920's example: DENY on paths.
            {"name": "deny-admin", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin", "/admin/*"]}}]}]},
            # CVE-2021-39156's example: DENY on an exact path.
            {"name": "deny-profile", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/user/profile"]}}]}]},
            {"name": "allow", "action": "ALLOW", "rules": [
                # CVE-2019-9901's example: anonymous access only under /info/.
                {"to": [{"operation": {"paths": ["/info/*"]}}]},
                # CVE-2021-31920's other pattern: ALLOW with notPaths.
                {"from": [{"source": {"requestPrincipals": ["*"]}}],
                 "to": [{"operation": {"notPaths": ["/private", "/private/*"]}}]},
            ]},
        ],
    }


@pytest.fixture(scope="module")
def raw_envoy(idp, backend):
    with start_envoy(bypass_config(idp), backend=backend, idp=idp, normalize_path=False) as envoy:
        yield envoy


# Envoy 1.40 never hands a #fragment to filters: by default its codec rejects the request (400),
# and with the runtime flag Istio sets (below) it strips the fragment. Fragment cases run against
# that Istio-configured Envoy, so the filter decides; the filter also strips fragments on its own
# (path::tests) for a host that would pass them through.
ISTIO_FRAGMENT_RUNTIME = {"envoy.reloadable_features.http_reject_path_with_fragment": False}


@pytest.fixture(scope="module")
def istio_runtime_envoy(idp, backend):
    with start_envoy(bypass_config(idp), backend=backend, idp=idp, normalize_path=False,
                     runtime=ISTIO_FRAGMENT_RUNTIME) as envoy:
        yield envoy


@pytest.fixture(scope="module")
def alice(idp):
    return bearer(mint(idp, "alice"))


def reached_backend(response):
    return response[1].get("x-backend") == "demo"


@pytest.mark.parametrize("path", ["/info/x", "/user/settings", "/secure/../user/x"])
def test_ordinary_paths_still_work(raw_envoy, alice, path):
    """The control group: the policy is not simply denying everything."""
    response = raw_envoy.get(path, alice)
    assert response[0] == 200 and reached_backend(response), response


# CVE-2021-31920 (ISTIO-SECURITY-2021-005, Envoy CVE-2021-29492): multiple slashes or escaped
# slashes (%2F, %5C) sidestep a DENY on paths or an ALLOW with notPaths; a backend that merges
# slashes or decodes them serves /admin.
@pytest.mark.parametrize("path, status", [
    ("/admin", 403),
    ("//admin", 403),
    ("///admin", 403),
    ("//admin//users", 403),
    ("/./admin", 403),
    ("/%2Fadmin", 400),
    ("/%2fadmin", 400),
    ("/admin%2Fusers", 400),
    ("/%5Cadmin", 400),
    ("/%5cadmin", 400),
    ("/\\admin", 400),
    ("/x/..%2Fadmin", 400),
    ("//private", 403),
    ("/private//x", 403),
    ("/private%2Fx", 400),
])
def test_cve_2021_31920_slashes(raw_envoy, alice, path, status):
    response = raw_envoy.get(path, alice)
    assert response[0] == status and not reached_backend(response), (path, response)
    if status == 403:
        assert response[2] == DENIED


# CVE-2021-39156 (ISTIO-SECURITY-2021-008, Envoy CVE-2021-32779): a fragment sidesteps a DENY on
# /user/profile; the request went upstream as /user/profile%23section1.
@pytest.mark.parametrize("path", ["/user/profile#section1", "/user/profile#", "/user/profile?tab=1#x"])
def test_cve_2021_39156_fragment(raw_envoy, istio_runtime_envoy, alice, path):
    response = istio_runtime_envoy.get(path, alice)
    assert (response[0], response[2]) == (403, DENIED) and not reached_backend(response), (path, response)
    # Envoy's default: its codec refuses the fragment before any filter runs.
    assert raw_envoy.get(path, alice)[0::2] == (400, "")


# CVE-2019-9901 (Envoy 1.9.0): Envoy did not normalize paths; with access allowed only under
# /info/, /info/../private reached /private on a backend that resolves dot segments. Same for a
# block on /admin and something/../admin.
@pytest.mark.parametrize("path, headers, status", [
    ("/info/../private", None, 401),
    ("/info/./../private", None, 401),
    ("/info/%2e%2e/private", None, 401),
    ("/info/%2E%2e/private/x", None, 401),
    ("/info/../../private", None, 401),
    ("/something/../admin", "alice", 403),
    ("/info/x/../../admin", "alice", 403),
    ("/info/.%2e/admin", "alice", 403),
])
def test_cve_2019_9901_dot_segments(raw_envoy, alice, path, headers, status):
    response = raw_envoy.get(path, alice if headers else None)
    assert response[0] == status and not reached_backend(response), (path, response)


# CVE-2020-8595 (ISTIO-SECURITY-2020-001): the exact-path match for JWT trigger rules included the
# query and fragment, so /secure? or /secure# skipped JWT validation.
@pytest.mark.parametrize("path", ["/secure", "/secure?", "/secure?x=1", "/secure#", "/secure#frag", "/secure?#"])
def test_cve_2020_8595_query_and_fragment(raw_envoy, istio_runtime_envoy, path):
    envoy = istio_runtime_envoy if "#" in path else raw_envoy
    status, headers, body = envoy.get(path)
    assert (status, body) == (401, "Jwt is missing"), (path, status, body)
    assert headers.get("www-authenticate", "").startswith('Bearer realm="http'), headers


@pytest.mark.parametrize("path", ["/secure", "/secure?", "/secure#frag"])
def test_cve_2020_8595_token_still_accepted(raw_envoy, istio_runtime_envoy, idp, path):
    envoy = istio_runtime_envoy if "#" in path else raw_envoy
    response = envoy.get(path, bearer(mint(idp, "bob")))
    assert response[0] == 200 and reached_backend(response), (path, response)


@pytest.mark.parametrize("path", ["/admin?x=1", "/admin#x", "/user/profile?", "/admin/?", "/admin?#"])
def test_deny_on_exact_paths_ignores_query_and_fragment(raw_envoy, istio_runtime_envoy, alice, path):
    envoy = istio_runtime_envoy if "#" in path else raw_envoy
    response = envoy.get(path, alice)
    assert (response[0], response[2]) == (403, DENIED) and not reached_backend(response), (path, response)


def raw_request(port, request_line):
    """Send a request line byte for byte (http.client refuses some of these); returns (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request_line + b"\r\nHost: shop\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := connection.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode("utf-8", "replace")


@pytest.mark.parametrize("request_line, body", [
    # Refused by the filter (its 400 says why).
    (b"GET /admin%00 HTTP/1.1", "Path has a control character"),
    (b"GET /info/%00/../../admin HTTP/1.1", "Path has a control character"),
    (b"GET /admin%0d%0a HTTP/1.1", "Path has a control character"),
    (b"GET /info/%zz HTTP/1.1", "Path has invalid percent-encoding"),
    (b"GET /info/% HTTP/1.1", "Path has invalid percent-encoding"),
    (b"GET /info/%2 HTTP/1.1", "Path has invalid percent-encoding"),
    (b"GET /info\\..\\admin HTTP/1.1", "Path has a backslash"),
    # Raw non-ASCII never gets past Envoy's HTTP/1 codec (its own 400 "Bad Request").
    (b"GET /info/\xff/../../admin HTTP/1.1", "Bad Request"),
    (b"GET /info/caf\xc3\xa9/../../admin HTTP/1.1", "Bad Request"),
])
def test_hostile_bytes_never_pass(raw_envoy, request_line, body):
    """NUL, encoded control characters, broken escapes, backslashes and raw non-ASCII: 400, never
    allowed and never a crash."""
    assert raw_request(raw_envoy.port, request_line) == (400, body), request_line
    assert raw_envoy.exit_code is None
    assert raw_envoy.get("/info/x")[0] == 200


def test_unsafe_paths_can_be_denied_instead_of_rejected(idp, backend):
    config = dict(bypass_config(idp), unsafePaths="DENY")
    with start_envoy(config, backend=backend, idp=idp, normalize_path=False) as envoy:
        for path in ("/%2Fadmin", "/admin%5Cx", "/info/%zz"):
            status, headers, body = envoy.get(path)
            assert (status, body) == (403, DENIED), (path, status, body)
            assert "www-authenticate" not in headers
