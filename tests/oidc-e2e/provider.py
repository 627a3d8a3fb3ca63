"""The platform under test as the tests meet it: its issuer, a person who
signs up through the public API, and an application the operator registers
with `gatehouse oidc client create`, played by a requests-oauth2client
relying party that finds everything else through discovery."""

import json
import os
import secrets
import subprocess
from dataclasses import dataclass

import requests
from requests_oauth2client import AuthorizationRequest, ClientSecretBasic, OAuth2Client

from callback import Callback

PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class User:
    email: str
    password: str


@dataclass(frozen=True)
class Provider:
    """One running platform: its issuer and its configuration file, which
    the operator's commands read."""

    issuer: str
    config: str

    @property
    def tls(self) -> bool:
        return self.issuer.startswith("https://")

    def session(self) -> requests.Session:
        """An HTTP client that trusts the test CA alone, not the system's."""
        session = requests.Session()
        # Else REQUESTS_CA_BUNDLE, where set, would win over `verify`.
        session.trust_env = False
        session.verify = os.environ["OIDC_E2E_CA"]
        return session

    def register_user(self) -> User:
        user = User(f"{secrets.token_hex(4)}@example.com", PASSWORD)
        response = self.session().post(
            f"{self.issuer}/v1/users",
            json={"email": user.email, "password": user.password, "display_name": "Ann Example"},
        )
        assert response.status_code == 201, response.text
        return user

    def register_client(self, name: str, redirect_uri: str, post_logout_redirect_uri: str, alg: str) -> dict:
        """Answers `{"client_id", "client_secret"}` as the command prints them."""
        command = [
            os.environ["OIDC_E2E_BIN"], "--config", self.config,
            "oidc", "client", "create", "--name", name,
            "--redirect-uri", redirect_uri,
            "--post-logout-redirect-uri", post_logout_redirect_uri,
            "--id-token-alg", alg,
            "--json",
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


class App:
    """A web application that signs its users in with the provider: a
    registered client, its redirect endpoints, and its relying party."""

    def __init__(self, provider: Provider, name: str, alg: str = "RS256"):
        self.provider = provider
        self.name = name
        self.alg = alg
        self.callback = Callback(tls=provider.tls)
        redirect_uri = self.callback.url("/callback")
        if not provider.tls:
            # A native app registers its loopback URI without a port and
            # listens on whatever port it gets (RFC 8252 section 7.3).
            registered = "http://127.0.0.1/callback"
        else:
            registered = redirect_uri
        self.post_logout_redirect_uri = self.callback.url("/signed-out")
        client = provider.register_client(name, registered, self.post_logout_redirect_uri, alg)
        self.client_id = client["client_id"]
        self.rp = OAuth2Client.from_discovery_endpoint(
            issuer=provider.issuer,
            auth=ClientSecretBasic(client["client_id"], client["client_secret"]),
            redirect_uri=redirect_uri,
            id_token_signed_response_alg=alg,
            session=provider.session(),
            # requests-oauth2client wants https everywhere unless testing.
            testing=not provider.tls,
        )
        self.discovery = provider.session().get(
            f"{provider.issuer}/.well-known/openid-configuration"
        ).json()

    def authorization_request(self, scope: str) -> AuthorizationRequest:
        """A request with a fresh state, nonce and PKCE verifier, whose
        response must name the issuer (RFC 9207)."""
        return self.rp.authorization_request(
            scope=scope, authorization_response_iss_parameter_supported=True
        )

    def close(self) -> None:
        self.callback.close()
