"""Pytest fixtures for the real-Envoy tests: one local IdP and one echo backend per session, and the
Envoys and tokens that several test modules share (one of each per module).

The test bed itself (Envoy, the IdP and backend processes, tokens, expectations) is the testbed
package in tools/, found through `pythonpath = tools` in pytest.ini."""

import pytest

import testbed.envoy
from testbed.config import shop_config
from testbed.envoy import start_envoy
from testbed.services import start_backend, start_idp
from testbed.tokens import mint


@pytest.fixture(scope="session", autouse=True)
def envoy_work_root(tmp_path_factory):
    """Keep Envoy configs and logs under pytest's tmp dir, so they survive for inspection."""
    testbed.envoy.WORK_ROOT = tmp_path_factory.mktemp("envoy")
    yield testbed.envoy.WORK_ROOT
    testbed.envoy.WORK_ROOT = None


@pytest.fixture(scope="session")
def idp(tmp_path_factory):
    """tools/devidp.py with --test-endpoints; see testbed.services.Idp."""
    with start_idp(tmp_path_factory.mktemp("idp")) as server:
        yield server


@pytest.fixture(scope="session")
def backend(tmp_path_factory):
    """tools/backend.py, the echo backend."""
    with start_backend(tmp_path_factory.mktemp("backend")) as server:
        yield server


@pytest.fixture(scope="module")
def shop(idp, backend):
    """Envoy running the shop configuration (testbed.config.shop_config)."""
    with start_envoy(shop_config(idp), backend=backend, idp=idp) as envoy:
        yield envoy


@pytest.fixture(scope="module")
def tokens(idp):
    """Tokens by name: the built-in users, a real client_credentials token, and variants of their
    claims (scope, realm roles)."""
    return {
        "alice": mint(idp, "alice"),
        "bob": mint(idp, "bob"),
        "testuser": mint(idp, "testuser"),
        "service": idp.client_credentials_token(),
        "alice-narrow-scope": mint(idp, "alice", scope="openid profile"),
        "alice-reordered-scope": mint(idp, "alice", scope="profile email openid"),
        "alice-email-lookalike": mint(idp, "alice", scope="openid email-extra profile"),
        "alice-no-scope": mint(idp, "alice", scope=None),
        "alice-not-admin": mint(idp, "alice", realm_access={"roles": ["user"]}),
        "bob-admin": mint(idp, "bob", realm_access={"roles": ["user", "admin"]}),
        "bob-auditor": mint(idp, "bob", realm_access={"roles": ["user", "auditor"]}),
    }


@pytest.fixture(autouse=True)
def restore_idp_certs_mode(request):
    """After each test that used the IdP, undo any idp.certs_mode(...) it set."""
    yield
    if "idp" in request.fixturenames:
        server = request.getfixturevalue("idp")
        if server.certs_mode_changed:
            server.reset_certs_mode()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the log tail of every running Envoy to a failing test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for envoy in testbed.envoy.RUNNING_ENVOYS:
            report.sections.append((f"log of {envoy!r}", envoy.log_tail(60)))
