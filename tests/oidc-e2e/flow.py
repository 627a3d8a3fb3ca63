"""The authorization code flow as the tests share it: the browser leg on
the provider's pages, and the relying party's side, which checks the
authorization response and the ID token for itself as well as through the
library (requests-oauth2client compares the ID token's `iss` only with an
issuer the response object was given, which its callback parsing leaves
out)."""

from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from requests_oauth2client import AuthorizationRequest, BearerToken
from selenium.webdriver.remote.webdriver import WebDriver

from browser import click, heading, sign_in, text
from provider import App, User

both_ways = pytest.mark.parametrize("browser", ["script", "no script"], indirect=True)
"""Runs a browser test twice: with script, and without it, which shows
that the provider's pages need none."""


def sign_in_and_allow(driver: WebDriver, app: App, user: User, scope: str) -> tuple[AuthorizationRequest, str]:
    """Starts at the application, signs in and allows it; answers the
    request and the URL the browser came back to."""
    request = app.authorization_request(scope)
    driver.get(request.uri)
    assert app.name in text(driver), "the sign-in page names the application"
    sign_in(driver, user.email, user.password)
    assert heading(driver) == f"Allow {app.name}?"
    click(driver, "Allow")
    return request, app.callback.next()


def exchange(app: App, request: AuthorizationRequest, returned: str) -> BearerToken:
    """The relying party's side of the code: the response names the issuer
    and brings the state back, and the code buys tokens with the PKCE
    verifier, whose ID token must validate."""
    assert returned.startswith(request.redirect_uri + "?"), returned
    query = parse_qs(urlsplit(returned).query)
    assert query.get("iss") == [app.provider.issuer], "the response names the issuer (RFC 9207)"
    assert query.get("state") == [request.state], "the state comes back unchanged"
    response = request.validate_callback(returned)
    token = app.rp.authorization_code(response)
    check_id_token(app, token, request.nonce)
    return token


def check_id_token(app: App, token: BearerToken, nonce: str | None) -> None:
    """What OpenID Connect Core 3.1.3.7 asks of an ID token, checked here
    whatever the library did: a signature by a key of the JWKS, and the
    claims. `nonce` None is a refreshed token's (section 12.2), which
    carries none or the first one's."""
    id_token = token.id_token
    assert id_token is not None, "the token response carries an ID token"
    key = app.rp.authorization_server_jwks.get_jwk_by_kid(id_token.kid)
    assert id_token.alg == app.alg
    assert id_token.verify_signature(key, alg=app.alg), "signed by a key of the JWKS"
    assert id_token.issuer == app.provider.issuer
    assert id_token.audiences == [app.client_id]
    assert id_token.get_claim("azp") in (None, app.client_id)
    assert id_token.expires_at > datetime.now(timezone.utc)
    assert id_token.subject
    if nonce is not None:
        assert id_token.nonce == nonce
