"""The relying party's calls after the sign-in, with no browser: userinfo
and the refresh token grant. Each test signs its user in once in the
browser to get its tokens."""

import pytest
from requests_oauth2client import InvalidClient, OAuth2Client

from flow import check_id_token, exchange, sign_in_and_allow


@pytest.fixture
def signed_in(browser, tls, make_app):
    """An application, its user, and the tokens of one sign-in that asked
    for a refresh token."""
    app = make_app(tls, "Calendar")
    user = tls.register_user()
    request, returned = sign_in_and_allow(browser, app, user, "openid email offline_access")
    return app, user, exchange(app, request, returned)


def test_userinfo_returns_the_email(signed_in):
    app, user, token = signed_in
    info = app.rp.userinfo(token)
    assert info["email"] == user.email
    assert info["sub"] == token.id_token.subject


def test_refresh_rotates_the_refresh_token(signed_in):
    app, user, token = signed_in
    assert token.refresh_token, "offline_access gives a refresh token"

    renewed = app.rp.refresh_token(token)
    assert renewed.refresh_token and renewed.refresh_token != token.refresh_token
    assert renewed.access_token != token.access_token
    assert app.rp.userinfo(renewed)["email"] == user.email

    # A refreshed ID token speaks of the same sign-in (OpenID Connect Core 12.2).
    check_id_token(app, renewed, nonce=None)
    assert renewed.id_token.subject == token.id_token.subject
    assert renewed.id_token.get_claim("auth_time") == token.id_token.get_claim("auth_time")
    assert renewed.id_token.get_claim("nonce") in (None, token.id_token.nonce)

    # The new refresh token is the one that works next.
    again = app.rp.refresh_token(renewed)
    assert again.refresh_token not in (token.refresh_token, renewed.refresh_token)


def test_a_refresh_with_a_wrong_secret_is_refused(signed_in, tls):
    app, _, token = signed_in
    impostor = OAuth2Client.from_discovery_endpoint(
        issuer=tls.issuer,
        client_id=app.client_id,
        client_secret="not-the-secret",
        session=tls.session(),
    )
    with pytest.raises(InvalidClient):
        impostor.refresh_token(token)


# Client credentials, introspection and revocation.
#
# Their tests go here once the provider has those endpoints: each with the
# `signed_in` fixture (or an app of its own for client credentials) and the
# relying party's own calls, `app.rp.client_credentials(...)`,
# `app.rp.introspect_token(...)` and `app.rp.revoke_refresh_token(...)`,
# which discovery sets up from `introspection_endpoint` and
# `revocation_endpoint`.
