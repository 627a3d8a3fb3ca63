"""Signing in to an application: the authorization code flow with PKCE, the
browser on the provider's sign-in and consent pages, over TLS and on the
loopback default."""

from urllib.parse import parse_qs, urlsplit

import pytest
from selenium.webdriver.common.by import By

from browser import click, heading, sign_in, text
from flow import both_ways, exchange, sign_in_and_allow


def test_the_relying_party_discovers_the_provider(tls, make_app):
    app = make_app(tls, "Wiki")
    assert app.rp.issuer == tls.issuer
    assert app.discovery["authorization_response_iss_parameter_supported"] is True
    assert "S256" in app.discovery["code_challenge_methods_supported"]
    for endpoint in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint",
                     "jwks_uri", "end_session_endpoint"):
        assert app.discovery[endpoint].startswith(f"{tls.issuer}/oauth2/"), endpoint
    assert len(app.rp.authorization_server_jwks) > 0, "the JWKS has a key"


@both_ways
def test_a_user_signs_in_and_allows_the_application(browser, tls, make_app):
    app = make_app(tls, "Wiki")
    user = tls.register_user()
    request = app.authorization_request("openid email profile")
    browser.get(request.uri)
    assert heading(browser) == "Sign in"
    assert "to continue to Wiki" in text(browser)

    sign_in(browser, user.email, user.password)
    assert heading(browser) == "Allow Wiki?"
    assert f"Signed in as {user.email}" in text(browser)
    assert "see your email address" in text(browser)
    click(browser, "Allow")

    token = exchange(app, request, app.callback.next())
    assert browser.find_element(By.TAG_NAME, "title").get_attribute("textContent") == "Back at the application"
    assert token.id_token.get_claim("email") == user.email
    assert token.id_token.get_claim("name") == "Ann Example"
    assert token.refresh_token is None, "no offline_access, no refresh token"


@both_ways
def test_a_wrong_password_is_shown_on_the_page(browser, tls, make_app):
    app = make_app(tls, "Wiki")
    user = tls.register_user()
    request = app.authorization_request("openid email")
    browser.get(request.uri)

    sign_in(browser, user.email, "not the password")
    assert browser.find_element(By.CSS_SELECTOR, "[role=alert]").text == "The email or password is wrong."
    assert browser.current_url.startswith(f"{tls.issuer}/oauth2/")
    assert browser.find_element(By.ID, "email").get_attribute("value") == user.email
    assert app.callback.nothing_received(), "the browser stays on the provider"

    sign_in(browser, user.email, user.password)
    assert heading(browser) == "Allow Wiki?"


@both_ways
def test_denying_consent_sends_access_denied_back(browser, tls, make_app):
    app = make_app(tls, "Wiki")
    user = tls.register_user()
    request = app.authorization_request("openid email")
    browser.get(request.uri)
    sign_in(browser, user.email, user.password)
    click(browser, "Deny")

    query = parse_qs(urlsplit(app.callback.next()).query)
    assert query["error"] == ["access_denied"]
    assert query["state"] == [request.state]
    assert query["iss"] == [tls.issuer]
    assert "code" not in query


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_the_first_id_token_of_another_algorithm_validates(browser, tls, make_app, alg):
    """The relying party fetched the JWKS when it discovered the provider,
    before its first sign-in; a key is published before it signs."""
    app = make_app(tls, f"Wiki ({alg})", alg)
    user = tls.register_user()
    request, returned = sign_in_and_allow(browser, app, user, "openid")
    exchange(app, request, returned)


def test_a_native_app_signs_in_on_the_loopback_default(browser, loopback, make_app):
    app = make_app(loopback, "Desktop notes")
    user = loopback.register_user()
    request, returned = sign_in_and_allow(browser, app, user, "openid email")
    assert returned.startswith("http://127.0.0.1:")
    token = exchange(app, request, returned)
    assert app.rp.userinfo(token)["email"] == user.email
