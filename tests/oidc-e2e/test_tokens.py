"""The relying party's calls with no browser: userinfo, the refresh token
grant, introspection and revocation after a sign-in (each such test signs
its user in once in the browser to get its tokens), and the client
credentials grant."""

import pytest
from requests_oauth2client import InvalidClient, InvalidGrant, OAuth2Client

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


def test_a_resource_server_introspects_and_the_client_revokes(signed_in, tls, make_app):
    app, user, token = signed_in
    api = make_app(tls, "Calendar API")
    about = api.rp.introspect_token(token.access_token)
    assert about["active"] is True
    assert about["sub"] == token.id_token.subject
    assert about["client_id"] == app.client_id
    assert set(about["scope"].split()) == {"openid", "email", "offline_access"}

    # Revoking the refresh token ends the sign-in's session, and with it
    # the access token (RFC 7009 section 2.1).
    assert app.rp.revoke_refresh_token(token.refresh_token)
    assert api.rp.introspect_token(token.access_token) == {"active": False}
    assert api.rp.introspect_token(token.refresh_token) == {"active": False}
    with pytest.raises(InvalidGrant):
        app.rp.refresh_token(token)


def test_a_backend_gets_a_token_of_its_own_with_client_credentials(tls, make_app):
    app = make_app(tls, "Nightly export")
    assert "client_credentials" in app.discovery["grant_types_supported"]
    token = app.rp.client_credentials()
    assert token.refresh_token is None and token.id_token is None

    about = app.rp.introspect_token(token.access_token)
    assert about["active"] is True
    assert about["sub"] == app.client_id == about["client_id"]

    # It speaks for no user: the platform's user API refuses it.
    me = tls.session().get(f"{tls.issuer}/v1/users/me", headers={"Authorization": f"Bearer {token.access_token}"})
    assert me.status_code == 403, me.text
    assert me.json()["code"] == "client_token_refused"

    assert app.rp.revoke_access_token(token.access_token)
    assert app.rp.introspect_token(token.access_token) == {"active": False}
