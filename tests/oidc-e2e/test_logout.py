"""Signing out from the application (OpenID Connect RP-Initiated Logout
1.0): the browser goes to the provider's end-session endpoint with the ID
token as a hint, confirms on the page, and lands on the address the
application registered, with its state."""

import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from requests_oauth2client import InvalidGrant
from selenium.webdriver.common.by import By

from browser import click, heading, text
from flow import both_ways, exchange, sign_in_and_allow


@both_ways
def test_signing_out_lands_on_the_registered_address_with_state(browser, tls, make_app):
    app = make_app(tls, "Wiki")
    user = tls.register_user()
    request, returned = sign_in_and_allow(browser, app, user, "openid email offline_access")
    token = exchange(app, request, returned)

    state = secrets.token_urlsafe(16)
    browser.get(app.discovery["end_session_endpoint"] + "?" + urlencode({
        "id_token_hint": str(token.id_token),
        "post_logout_redirect_uri": app.post_logout_redirect_uri,
        "state": state,
    }))
    assert heading(browser) == "Sign out?"
    assert "Wiki asks to sign you out of gatehouse." in text(browser)
    click(browser, "Sign out")

    landed = app.callback.next()
    assert landed.split("?")[0] == app.post_logout_redirect_uri
    assert parse_qs(urlsplit(landed).query) == {"state": [state]}
    assert browser.current_url == landed

    # Signed out: the application's refresh token stops working, and the
    # next sign-in asks for the password again.
    with pytest.raises(InvalidGrant):
        app.rp.refresh_token(token)
    browser.get(app.authorization_request("openid email").uri)
    assert heading(browser) == "Sign in"
    assert browser.find_element(By.ID, "password")
