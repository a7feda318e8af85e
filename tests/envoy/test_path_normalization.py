"""Path normalization by the filter itself (Envoy's normalize_path off): dot segments are resolved
before policies match, and paths that cannot be made unambiguous are 400."""

import pytest

from testbed.config import shop_config
from testbed.envoy import start_envoy
from testbed.expect import DENIED, bearer, expect_allowed


@pytest.fixture(scope="module")
def raw_path_envoy(idp, backend):
    """Envoy that leaves paths alone, so normalization is the filter's."""
    with start_envoy(shop_config(idp), backend=backend, idp=idp, normalize_path=False) as envoy:
        yield envoy


@pytest.mark.parametrize("who, path, outcome", [
    ("bob", "/api/admin/../public/x", 200),
    ("bob", "/api/public/./x", 200),
    (None, "/x/../healthz", 200),
    ("bob", "/api/public/../admin/x", 403),
    ("alice", "/api/public/../../debug/x", 403),
])
def test_paths_are_normalized_before_matching(raw_path_envoy, tokens, who, path, outcome):
    response = raw_path_envoy.get(path, bearer(tokens[who]) if who else {})
    if outcome == 200:
        expect_allowed(response)
    else:
        assert (response[0], response[2]) == (403, DENIED), response


@pytest.mark.parametrize("who, path", [(None, "/healthz%00"), ("bob", "/api%2Fadmin/x")])
def test_unsafe_paths_are_400(raw_path_envoy, tokens, who, path):
    response = raw_path_envoy.get(path, bearer(tokens[who]) if who else {})
    assert response[0] == 400, response
