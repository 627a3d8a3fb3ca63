"""Fixtures: the two platforms scripts/oidc-e2e.sh started (one behind the
gateway's TLS, one on plain http at a loopback address), a browser with or
without script, and applications registered for one test each, so that no
test sees another's consent or sessions."""

import os
from collections.abc import Callable, Iterator

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

import browser as chromium
from provider import App, Provider


@pytest.fixture(scope="session")
def tls() -> Provider:
    return Provider(os.environ["OIDC_E2E_TLS_ISSUER"], os.environ["OIDC_E2E_TLS_CONFIG"])


@pytest.fixture(scope="session")
def loopback() -> Provider:
    return Provider(os.environ["OIDC_E2E_LOOPBACK_ISSUER"], os.environ["OIDC_E2E_LOOPBACK_CONFIG"])


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[WebDriver]:
    """Chromium with script, or without it where a test is parametrized
    with "no script" (`flow.both_ways`)."""
    script = getattr(request, "param", "script") == "script"
    driver = chromium.chromium(script)
    try:
        assert chromium.runs_script(driver) == script, "the browser's script setting took"
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def make_app() -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def make(provider: Provider, name: str, alg: str = "RS256") -> App:
        app = App(provider, name, alg)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()
