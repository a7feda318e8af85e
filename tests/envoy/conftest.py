"""Pytest fixtures for the real-Envoy tests: one local IdP and one echo backend per session."""

import pytest

import harness


@pytest.fixture(scope="session", autouse=True)
def envoy_work_root(tmp_path_factory):
    """Keep Envoy configs and logs under pytest's tmp dir, so they survive for inspection."""
    harness.WORK_ROOT = tmp_path_factory.mktemp("envoy")
    yield harness.WORK_ROOT
    harness.WORK_ROOT = None


@pytest.fixture(scope="session")
def idp(tmp_path_factory):
    """tools/devidp.py with --test-endpoints; see harness.Idp."""
    with harness.start_idp(tmp_path_factory.mktemp("idp")) as server:
        yield server


@pytest.fixture(scope="session")
def backend(tmp_path_factory):
    """tools/backend.py, the echo backend."""
    with harness.start_backend(tmp_path_factory.mktemp("backend")) as server:
        yield server


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
        for envoy in harness.RUNNING_ENVOYS:
            report.sections.append((f"log of {envoy!r}", envoy.log_tail(60)))
