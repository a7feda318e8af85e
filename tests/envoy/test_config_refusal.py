"""Invalid plugin configuration in real Envoy: refused with a message naming the field, and never
served through."""

import pytest

from testbed.envoy import start_envoy
from testbed.expect import expect_refused


@pytest.mark.parametrize("config, fragments", [
    ({"jwtRules": [{"issuer": "", "jwksUri": "http://x/certs"}]}, ["jwtRules[0].issuer", "empty"]),
    ({"policies": [{"name": "p", "action": "MAYBE"}]}, ["policies[0].action", "MAYBE"]),
    ({"jwtRules": [{"issuer": "i", "jwksUri": "http://x/c", "bogus": 1}]}, ["bogus", "unknown field"]),
    ("{not json", ["line 1 column 2"]),
], ids=["empty-issuer", "unknown-action", "unknown-field", "not-json"])
def test_invalid_configuration_is_refused(backend, config, fragments):
    with start_envoy(config, backend=backend, expect_failure=True) as envoy:
        expect_refused(envoy, fragments)
