"""`jwt-authz convert` end to end: Istio resources in, the printed configuration enforced in real
Envoy. What convert must never do is change who gets in: turn a dry-run policy into an enforcing
one, or merge policies meant for different workloads into one configuration."""

import json
import os
import subprocess
from pathlib import Path

from testbed.envoy import start_envoy
from testbed.paths import REPO_ROOT

CLI = Path(os.environ.get("JWT_AUTHZ_CLI", REPO_ROOT / "dist" / "jwt-authz"))

DRY_RUN = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: trial-deny-deletes
  namespace: shop
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: shop}
spec:
  rules: [{}]
"""

# A mesh-wide DENY, a namespace-wide DENY, and ALLOW policies for two different workloads of that
# namespace: Istio applies web-allow to web's pods only.
MESH = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny-debug, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/debug/*]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: shop-deny-trace, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [TRACE]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: cart-allow, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  rules: [{to: [{operation: {paths: [/cart/*, /debug/*]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-allow, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{to: [{operation: {paths: ["*"]}}]}]
"""


def convert(tmp_path, text, *options):
    assert CLI.exists(), f"{CLI} is missing: run `make cli`"
    source = tmp_path / "policies.yaml"
    source.write_text(text)
    return subprocess.run([str(CLI), "convert", *options, str(source)], capture_output=True, text=True)


def converted(tmp_path, text, *options):
    result = convert(tmp_path, text, *options)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def dry_run_denials(envoy):
    counts = [value for key, value in envoy.stats().items() if key.endswith("jwt_authz.dry_run_denied_total")]
    assert len(counts) == 1
    return counts[0]


def test_a_dry_run_policy_stays_a_dry_run(tmp_path, backend):
    config, _ = converted(tmp_path, DRY_RUN)
    assert config["policies"][0]["dryRun"] is True
    with start_envoy(config, backend=backend) as envoy:
        before = dry_run_denials(envoy)
        # Istio does not enforce a dry-run DENY: the request passes, and what it would have
        # denied is counted.
        assert envoy.get("/orders/1", method="DELETE")[0] == 200
        assert dry_run_denials(envoy) == before + 1


def test_policies_for_different_workloads_are_refused_together(tmp_path):
    result = convert(tmp_path, MESH)
    assert result.returncode == 1, result.stdout
    assert "cart-allow" in result.stderr and "web-allow" in result.stderr, result.stderr
    assert "--namespace" in result.stderr
    assert result.stdout == ""


def test_a_namespace_without_the_workloads_labels_is_refused(tmp_path):
    """A namespace alone would read as a workload without labels and skip its selector DENYs."""
    result = convert(tmp_path, MESH, "--namespace", "shop")
    assert result.returncode == 2 and "--labels" in result.stderr, result.stderr
    config, notes = converted(tmp_path, MESH, "--namespace", "shop", "--labels", "")
    assert [p["name"] for p in config["policies"]] == ["mesh-deny-debug", "shop-deny-trace"]


def test_the_configuration_for_one_workload_is_what_istio_applies_to_it(tmp_path, backend):
    config, notes = converted(tmp_path, MESH, "--namespace", "shop", "--labels", "app=cart")
    assert [p["name"] for p in config["policies"]] == ["mesh-deny-debug", "shop-deny-trace", "cart-allow"]
    assert "web-allow" in notes and "skipped" in notes
    with start_envoy(config, backend=backend) as envoy:
        assert envoy.get("/cart/items")[0] == 200
        # Only web-allow admits these; it is not cart's policy, so cart's filter denies them.
        assert envoy.get("/web/index.html")[0] in (401, 403)
        # The mesh-wide DENY applies to cart too, ALLOW or not.
        assert envoy.get("/debug/vars")[0] in (401, 403)
        assert envoy.get("/cart/items", method="TRACE")[0] in (401, 403)


# --- Istio before 1.5: the authentication Policy -----------------------------------------------------

LEGACY_POLICY = """
apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: jwt-shop, namespace: shop}
spec:
  targets: [{name: backend}]
  origins:
  - jwt:
      issuer: ISSUER
      jwksUri: ISSUER/protocol/openid-connect/certs
      audiences: [account]
      triggerRules:
      - excludedPaths: [{exact: /health}, {prefix: /public/}]
  principalBinding: USE_ORIGIN
"""


def test_a_legacy_authentication_policy_enforces_as_istio_before_1_5_did(tmp_path, idp, backend):
    """Istio 1.0-1.4: an origin made a valid JWT required on the workload, except on the paths its
    trigger rules excluded, where the token was not even validated. Tokens as the guides of that
    time show them: Keycloak < 17's /auth issuer, aud: account."""
    legacy_issuer = f"http://127.0.0.1:{idp.port}/auth/realms/shop"
    result = convert(tmp_path, LEGACY_POLICY.replace("ISSUER", legacy_issuer))
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert "spec.targets (backend) not carried over" in result.stderr
    [rule] = config["jwtRules"]
    assert rule["issuer"] == legacy_issuer and rule["audiences"] == ["account"]
    rule["jwksCluster"] = "idp"  # the test bed's cluster for the IdP (in Istio: its outbound cluster)
    status, answer = idp.token_request({"grant_type": "password", "client_id": "shop-web",
                                        "username": "alice", "password": "alice"}, path_prefix="/auth")
    assert status == 200
    token = answer["access_token"]
    current = idp.password_token("alice", "alice")  # the same realm under the current prefix: another iss
    forged = token[:-6] + "AAAAAA"  # its signature altered
    with start_envoy(config, backend=backend, idp=idp) as envoy:
        outcomes = {
            ("/api/orders", None): 401,  # origin required
            ("/api/orders", token): 200,
            ("/api/orders", current): 401,  # not the origin's issuer
            ("/api/orders", forged): 401,
            ("/health", None): 200,  # excluded: not validated
            ("/health", forged): 200,  # ... not even an invalid token
            ("/public/items", None): 200,
            ("/publicity", None): 401,  # prefix /public/ only
        }
        for (path, bearer_token), expected in outcomes.items():
            headers = {"Authorization": f"Bearer {bearer_token}"} if bearer_token else {}
            assert envoy.get(path, headers)[0] == expected, (path, bool(bearer_token), expected)


LEGACY_RBAC = """
apiVersion: rbac.istio.io/v1alpha1
kind: ClusterRbacConfig
metadata: {name: default}
spec: {mode: ON}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: order-reader, namespace: shop}
spec:
  rules:
  - services: ["backend.shop.svc.cluster.local"]
    paths: ["/api/*"]
    methods: ["GET"]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: alice-reads-orders, namespace: shop}
spec:
  subjects:
  - properties: {"request.auth.claims[preferred_username]": "alice", "request.auth.claims[azp]": "shop-web"}
  roleRef: {kind: ServiceRole, name: order-reader}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: backend-service-account-reads-orders, namespace: shop}
spec:
  subjects:
  - properties: {"request.auth.claims[preferred_username]": "service-account-shop-backend"}
  roleRef: {kind: ServiceRole, name: order-reader}
"""


def test_legacy_rbac_with_its_authentication_policy_answers_as_istio_1_4(tmp_path, idp, backend):
    """ServiceRole + ServiceRoleBinding under ClusterRbacConfig mode ON (deny by default), with the
    legacy Policy requiring a token except on /health: each request's answer as Istio 1.4 gave it."""
    legacy_issuer = f"http://127.0.0.1:{idp.port}/auth/realms/shop"
    result = convert(tmp_path, LEGACY_POLICY.replace("ISSUER", legacy_issuer) + "---" + LEGACY_RBAC)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    config["jwtRules"][0]["jwksCluster"] = "idp"
    assert "services (backend.shop.svc.cluster.local) not carried over" in result.stderr

    def token(user):
        status, answer = idp.token_request({"grant_type": "password", "client_id": "shop-web",
                                            "username": user, "password": user}, path_prefix="/auth")
        assert status == 200
        return answer["access_token"]

    alice, bob = token("alice"), token("bob")
    status, answer = idp.token_request({"grant_type": "password", "client_id": "shop-mobile", "username": "alice",
                                        "password": "alice"}, path_prefix="/auth")
    alice_mobile = answer["access_token"]  # azp: shop-mobile (and ES256-signed)
    status, answer = idp.token_request({"grant_type": "client_credentials", "client_id": "shop-backend",
                                        "client_secret": "shop-backend-secret"}, path_prefix="/auth")
    service_account = answer["access_token"]  # preferred_username: service-account-shop-backend
    with start_envoy(config, backend=backend, idp=idp) as envoy:
        outcomes = [
            ("GET", "/api/orders", alice, 200),  # bound to the role (her name and the client, azp)
            ("GET", "/api/orders", alice_mobile, 403),  # the same user through another client
            ("GET", "/api/orders", service_account, 200),  # the service account's own binding
            ("GET", "/api/orders", bob, 403),  # authenticated, not bound
            ("POST", "/api/orders", alice, 403),  # the role allows GET only
            ("GET", "/admin", alice, 403),  # not the role's paths
            ("GET", "/api/orders", None, 401),  # the origin requires a token here
            # No token needed here, but RBAC denies by default. Istio 1.4 answered 403; jwt-authz
            # answers a denied request that has no token with 401 jwt_missing (docs/operations.md):
            # refused either way, with the challenge that says a token would help.
            ("GET", "/health", None, 401),
        ]
        for method, path, bearer_token, expected in outcomes:
            headers = {"Authorization": f"Bearer {bearer_token}"} if bearer_token else {}
            assert envoy.get(path, headers, method=method)[0] == expected, (method, path, expected)
