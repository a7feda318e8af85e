"""The test bed shared by the real-Envoy tests (tests/envoy, tests/oci) and the tools that drive
Envoy (tools/bench.py, tools/soak.py): the plugin running in real Envoy, in front of the dev
identity provider (tools/devidp.py) and the echo backend (tools/backend.py).

  paths     where the repository, the tools, Envoy and dist/plugin.wasm are (ENVOY_BIN and
            JWT_AUTHZ_WASM override the last two)
  net       http_request (raw paths, exact headers) and free loopback ports
  tokens    JWT encoding (b64url, raw_token), JWS signatures of every algorithm (sign, jws) and minting
            Keycloak-shaped tokens (mint with the IdP's RS256 key, mint_as with any key and algorithm)
  keys      keys for every algorithm (ALGORITHMS, signing_key) and their JWKs (jwk, public_key_from_jwk)
  services  the dev IdP and the echo backend as processes (start_idp, start_backend) and their clients;
            the IdP as a JWKS server for any key set (serve_jwks)
  envoy     Envoy bootstraps (bootstrap, wasm_filter, static_cluster) and the Envoy process (start_envoy)
  wasm      hand-made Proxy-Wasm modules (noop_module, trapping_module)
  config    plugin configurations: jwt_rule, policy building blocks, the shop configuration
  expect    the filter's answers: error messages, bearer, expect_allowed / _missing / _rejected /
            _forbidden / _refused, and reason codes from the denial log (expect_denied_for)
  istio     Istio's translation of the same configuration into Envoy's native jwt_authn and rbac

How it is found, with no import-path edits in any test or tool: this package lives in tools/, so a
script run as `python tools/bench.py` finds it (Python puts the script's own directory first on the
module search path), and pytest finds it through `pythonpath = tools` in the repository's
pytest.ini. The same two mechanisms make tools/devidp.py and tools/oci_image.py importable as
`devidp` and `oci_image`. Other Python code (a REPL, a one-off script elsewhere) sets
PYTHONPATH=tools.
"""
