//! The OpenID Connect provider through the gateway, with the `openidconnect`
//! crate as the relying party: discovery, the hosted pages (driven as a
//! browser without script would: GET the page, POST its form), the code
//! exchange with PKCE, ID-token validation, userinfo and refresh; and the
//! attacks the provider refuses.

use std::collections::BTreeMap;

use gatehouse::auth::oidc::clients::ClientSpec;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    OAuth2TokenResponse as _, PkceCodeChallenge, RedirectUrl, Scope, TokenResponse as _,
};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{self, PASSWORD, TestApp};

const REDIRECT: &str = "http://127.0.0.1:9999/callback";

/// An app whose gateway listens at its public URL, the issuer.
async fn provider() -> (TestApp, String) {
    let addr = support::closed_addr();
    let issuer = format!("http://{addr}");
    let public_url = issuer.clone();
    let app = TestApp::builder()
        .gateway(|g| g.listen = addr)
        .server(|s| s.public_url = public_url)
        .start()
        .await;
    (app, issuer)
}

/// Registers a client; answers its id and secret.
async fn client(app: &TestApp, spec: ClientSpec) -> (String, Option<String>) {
    let auth = gatehouse::auth::AuthConfig::default();
    let issued = gatehouse::auth::register_client(&app.ctx, &auth, spec)
        .await
        .unwrap();
    (issued.client.id, issued.secret)
}

fn spec(name: &str) -> ClientSpec {
    ClientSpec {
        name: name.into(),
        redirect_uris: vec![REDIRECT.into()],
        ..Default::default()
    }
}

/// A browser without script: follows nothing by itself, keeps cookies.
struct Browser {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
}

/// What a page answered: status, `Location`, body.
struct Page {
    status: StatusCode,
    location: Option<String>,
    body: String,
}

impl Page {
    /// The value of the hidden field `name` of the page's form.
    fn field(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no {name} in {}", self.body))
            + marker.len();
        let end = self.body[start..].find('"').unwrap() + start;
        self.body[start..end].to_owned()
    }

    /// The query parameters of the redirect's target.
    fn redirect_query(&self) -> BTreeMap<String, String> {
        let location = self
            .location
            .as_deref()
            .unwrap_or_else(|| panic!("no redirect: {} {}", self.status, self.body));
        let query = location.split_once('?').map(|(_, q)| q).unwrap_or_default();
        serde_urlencoded::from_str(query).unwrap()
    }
}

impl Browser {
    fn new() -> Self {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
        }
    }

    async fn answer(&mut self, response: reqwest::Response) -> Page {
        for set in response.headers().get_all("set-cookie") {
            let set = set.to_str().unwrap();
            assert!(
                set.contains("Secure") && set.contains("HttpOnly") && set.contains("SameSite=Lax"),
                "{set}"
            );
            assert!(
                set.starts_with("__Host-") && set.contains("Path=/") && !set.contains("Domain"),
                "{set}"
            );
            let (pair, _) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || set.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.into(), value.into());
            }
        }
        let status = response.status();
        if status.is_success() || status.is_redirection() {
            let csp = response.headers()["content-security-policy"]
                .to_str()
                .unwrap();
            assert!(
                csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
                "{csp}"
            );
        }
        let location = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        Page {
            status,
            location,
            body: response.text().await.unwrap(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn get(&mut self, url: &str) -> Page {
        let response = self
            .http
            .get(url)
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.answer(response).await
    }

    async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> Page {
        let response = self
            .http
            .post(url)
            .header("cookie", self.cookie_header())
            .form(form)
            .send()
            .await
            .unwrap();
        self.answer(response).await
    }

    /// Signs in on the page `page` shows.
    async fn sign_in(&mut self, issuer: &str, page: &Page, email: &str, password: &str) -> Page {
        assert!(
            page.body.contains("<label for=\"password\">"),
            "{}",
            page.body
        );
        let (request, csrf) = (page.field("request"), page.field("csrf"));
        self.post(
            &format!("{issuer}/oauth2/signin"),
            &[
                ("request", &request),
                ("csrf", &csrf),
                ("email", email),
                ("password", password),
            ],
        )
        .await
    }

    /// Answers the consent page `page` shows with `decision`.
    async fn consent(&mut self, issuer: &str, page: &Page, decision: &str) -> Page {
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let (request, csrf) = (page.field("request"), page.field("csrf"));
        self.post(
            &format!("{issuer}/oauth2/consent"),
            &[
                ("request", &request),
                ("csrf", &csrf),
                ("decision", decision),
            ],
        )
        .await
    }
}

/// The relying party's client, discovered through the gateway.
async fn relying_party(
    issuer: &str,
    id: &str,
    secret: Option<&str>,
) -> (
    CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    >,
    reqwest::Client,
) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let metadata =
        CoreProviderMetadata::discover_async(IssuerUrl::new(issuer.into()).unwrap(), &http)
            .await
            .unwrap();
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(id.into()),
        secret.map(|s| ClientSecret::new(s.into())),
    )
    .set_redirect_uri(RedirectUrl::new(REDIRECT.into()).unwrap());
    (client, http)
}

#[tokio::test]
async fn a_relying_party_signs_a_user_in_with_a_code_and_pkce_on_the_hosted_pages() {
    let (app, issuer) = provider().await;
    let user = support::register(&app.http, &app.gateway_base, "ann@example.com").await;
    let (id, secret) = client(&app, spec("Grafana")).await;
    let (rp, http) = relying_party(&issuer, &id, secret.as_deref()).await;

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = rp
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("profile".into()))
        .set_pkce_challenge(challenge)
        .url();
    let mut browser = Browser::new();
    let page = browser.get(url.as_str()).await;
    assert!(
        page.body.contains("Grafana"),
        "the sign-in page names the client"
    );

    // A wrong password shows the page again, saying so, with no redirect.
    let wrong = browser
        .sign_in(&issuer, &page, "ann@example.com", "not the password")
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        wrong.body.contains("The email or password is wrong."),
        "{}",
        wrong.body
    );
    assert_eq!(wrong.location, None);

    let consent = browser
        .sign_in(&issuer, &wrong, "ann@example.com", PASSWORD)
        .await;
    assert!(consent.body.contains("Allow Grafana?"), "{}", consent.body);
    assert!(consent.body.contains("see your email address"));
    let back = browser.consent(&issuer, &consent, "allow").await;
    assert!(back.location.as_deref().unwrap().starts_with(REDIRECT));
    let query = back.redirect_query();
    assert_eq!(
        query["state"],
        *state.secret(),
        "state comes back unchanged"
    );
    assert_eq!(query["iss"], issuer, "the issuer names itself (RFC 9207)");

    let tokens = rp
        .exchange_code(AuthorizationCode::new(query["code"].clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    let id_token = tokens.id_token().expect("an ID token");
    let verifier = rp.id_token_verifier();
    let claims = id_token
        .claims(&verifier, &nonce)
        .expect("the ID token validates");
    assert_eq!(claims.subject().as_str(), user["id"].as_str().unwrap());
    assert_eq!(claims.email().unwrap().as_str(), "ann@example.com");
    assert_eq!(claims.email_verified(), Some(false));
    assert!(claims.auth_time().is_some());
    let at_hash = AccessTokenHash::from_token(
        tokens.access_token(),
        id_token.signing_alg().unwrap(),
        id_token.signing_key(&verifier).unwrap(),
    )
    .unwrap();
    assert_eq!(claims.access_token_hash(), Some(&at_hash));
    assert!(
        tokens.refresh_token().is_none(),
        "no offline_access, no refresh token"
    );

    let info: CoreUserInfoClaims = rp
        .user_info(tokens.access_token().clone(), None)
        .unwrap()
        .request_async(&http)
        .await
        .unwrap();
    assert_eq!(info.subject().as_str(), user["id"].as_str().unwrap());
    assert_eq!(info.email().unwrap().as_str(), "ann@example.com");

    // The access token is the platform's: the gateway lets it through.
    let me = app
        .through(
            reqwest::Method::GET,
            "/v1/users/me",
            tokens.access_token().secret(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);

    // The same browser, later: signed in and consent remembered, so the
    // next request goes straight back with a code.
    let (again, _, _) = rp
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".into()))
        .set_pkce_challenge(PkceCodeChallenge::new_random_sha256().0)
        .url();
    let straight = browser.get(again.as_str()).await;
    assert!(
        straight.redirect_query().contains_key("code"),
        "{}",
        straight.body
    );

    // prompt=login asks for the password again.
    let (fresh, _, _) = rp
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_prompt(openidconnect::core::CoreAuthPrompt::Login)
        .set_pkce_challenge(PkceCodeChallenge::new_random_sha256().0)
        .url();
    let page = browser.get(fresh.as_str()).await;
    assert!(
        page.body.contains("<label for=\"password\">"),
        "{}",
        page.body
    );
}

/// Runs the browser leg for `client_id` with `scope`; answers the code and
/// the PKCE verifier.
async fn code_for(
    issuer: &str,
    browser: &mut Browser,
    client_id: &str,
    scope: &str,
) -> (String, String) {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let url = format!(
        "{issuer}/oauth2/authorize?{}",
        serde_urlencoded::to_string([
            ("client_id", client_id),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
            ("scope", scope),
            ("state", "s"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .unwrap()
    );
    let mut page = browser.get(&url).await;
    if page.body.contains("<label for=\"password\">") {
        page = browser
            .sign_in(issuer, &page, "ann@example.com", PASSWORD)
            .await;
    }
    if page.body.contains("Allow") {
        page = browser.consent(issuer, &page, "allow").await;
    }
    (
        page.redirect_query()["code"].clone(),
        verifier.secret().clone(),
    )
}

/// Posts the token endpoint's form with the client's Basic credentials.
async fn token(
    app: &TestApp,
    issuer: &str,
    id: &str,
    secret: &str,
    form: &[(&str, &str)],
) -> (StatusCode, Value) {
    let r = app
        .http
        .post(format!("{issuer}/oauth2/token"))
        .basic_auth(id, Some(secret))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(r.headers()["cache-control"], "no-store");
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn a_code_works_once_and_its_second_use_ends_what_the_first_opened() {
    let (app, issuer) = provider().await;
    support::register(&app.http, &app.gateway_base, "ann@example.com").await;
    let (id, secret) = client(
        &app,
        ClientSpec {
            first_party: true,
            ..spec("App")
        },
    )
    .await;
    let secret = secret.unwrap();
    let mut browser = Browser::new();
    let (code, verifier) = code_for(&issuer, &mut browser, &id, "openid offline_access").await;
    let exchange = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
    ];
    let (status, first) = token(&app, &issuer, &id, &secret, &exchange).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let access = first["access_token"].as_str().unwrap();
    assert!(
        first["refresh_token"].is_string(),
        "offline_access brings a refresh token"
    );
    assert_eq!(app.me(access).await.status(), StatusCode::OK);

    let (status, second) = token(&app, &issuer, &id, &secret, &exchange).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(second["error"], "invalid_grant");
    // The first exchange's session is ended: its access token and its
    // refresh token are refused from now on.
    let info = app
        .http
        .get(format!("{issuer}/oauth2/userinfo"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), StatusCode::UNAUTHORIZED);
    assert!(
        info.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    let refresh = first["refresh_token"].as_str().unwrap();
    let (status, refused) = token(
        &app,
        &issuer,
        &id,
        &secret,
        &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
    )
    .await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn the_exchange_refuses_a_wrong_verifier_uri_secret_or_client() {
    let (app, issuer) = provider().await;
    support::register(&app.http, &app.gateway_base, "ann@example.com").await;
    let (id, secret) = client(
        &app,
        ClientSpec {
            first_party: true,
            ..spec("App")
        },
    )
    .await;
    let secret = secret.unwrap();
    let (other, other_secret) = client(
        &app,
        ClientSpec {
            first_party: true,
            ..spec("Other")
        },
    )
    .await;
    let mut browser = Browser::new();
    let (code, verifier) = code_for(&issuer, &mut browser, &id, "openid offline_access").await;
    let form = |code: &'static str, uri: &'static str, v: &'static str| {
        vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", uri),
            ("code_verifier", v),
        ]
    };
    let code: &'static str = Box::leak(code.into_boxed_str());
    let verifier: &'static str = Box::leak(verifier.into_boxed_str());

    let wrong_verifier = "x".repeat(43);
    let (status, body) = token(
        &app,
        &issuer,
        &id,
        &secret,
        &form(code, REDIRECT, Box::leak(wrong_verifier.into_boxed_str())),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    // Dropping PKCE at the exchange is refused too.
    let (status, body) = token(&app, &issuer, &id, &secret, &form(code, REDIRECT, "")[..3]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (status, body) = token(
        &app,
        &issuer,
        &id,
        &secret,
        &form(code, "http://127.0.0.1:9999/other", verifier),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (status, body) = token(
        &app,
        &issuer,
        &id,
        "not-the-secret",
        &form(code, REDIRECT, verifier),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let (status, body) = token(
        &app,
        &issuer,
        &other,
        other_secret.as_deref().unwrap(),
        &form(code, REDIRECT, verifier),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // None of that spent the code: its own client still exchanges it.
    let (status, tokens) =
        token(&app, &issuer, &id, &secret, &form(code, REDIRECT, verifier)).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");

    // A refresh token is its client's: another client's attempt is
    // refused and leaves it working.
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let rotate = [("grant_type", "refresh_token"), ("refresh_token", refresh)];
    let (status, body) = token(
        &app,
        &issuer,
        &other,
        other_secret.as_deref().unwrap(),
        &rotate,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (status, rotated) = token(&app, &issuer, &id, &secret, &rotate).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert!(
        rotated["id_token"].is_string(),
        "a refresh brings a new ID token"
    );
    assert_ne!(rotated["refresh_token"], tokens["refresh_token"]);
    // The JSON API does not take a provider client's refresh token either.
    let r = app
        .auth_post(
            "/v1/auth/refresh",
            serde_json::json!({"refresh_token": rotated["refresh_token"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_wrong_client_or_redirect_uri_is_shown_and_never_redirected() {
    let (app, issuer) = provider().await;
    let (id, _) = client(&app, spec("App")).await;
    let mut browser = Browser::new();
    for (client_id, redirect) in [
        (id.as_str(), "https://evil.example.com/callback"),
        (id.as_str(), "http://127.0.0.1:9999/callback/x"),
        ("no-such-client", REDIRECT),
    ] {
        let url = format!(
            "{issuer}/oauth2/authorize?client_id={client_id}&redirect_uri={}&response_type=code&scope=openid",
            urlencode(redirect)
        );
        let page = browser.get(&url).await;
        assert_eq!(
            page.status,
            StatusCode::BAD_REQUEST,
            "{client_id} {redirect}"
        );
        assert_eq!(page.location, None);
        assert!(page.body.contains("Sign-in cannot go on"), "{}", page.body);
    }

    // Other faults go back to the client, with its state and the issuer.
    let url = format!(
        "{issuer}/oauth2/authorize?client_id={id}&redirect_uri={}&response_type=token&scope=openid&state=xyz",
        urlencode(REDIRECT)
    );
    let query = browser.get(&url).await.redirect_query();
    assert_eq!(query["error"], "unsupported_response_type");
    assert_eq!(query["state"], "xyz");
    assert_eq!(query["iss"], issuer);

    // prompt=none with nobody signed in: login_required, with no page.
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let url = format!(
        "{issuer}/oauth2/authorize?client_id={id}&redirect_uri={}&response_type=code&scope=openid&state=s&prompt=none&code_challenge={}&code_challenge_method=S256",
        urlencode(REDIRECT),
        challenge.as_str()
    );
    assert_eq!(
        browser.get(&url).await.redirect_query()["error"],
        "login_required"
    );

    // A form posted without the browser's CSRF cookie is refused.
    let page = browser
        .get(&format!(
            "{issuer}/oauth2/authorize?client_id={id}&redirect_uri={}&response_type=code&scope=openid&code_challenge={}&code_challenge_method=S256",
            urlencode(REDIRECT),
            challenge.as_str()
        ))
        .await;
    let mut stranger = Browser::new();
    let forged = stranger
        .sign_in(&issuer, &page, "ann@example.com", PASSWORD)
        .await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
    assert_eq!(forged.location, None);
}

#[tokio::test]
async fn signing_out_ends_the_browser_session_and_what_it_opened_and_goes_back_only_where_registered()
 {
    let (app, issuer) = provider().await;
    support::register(&app.http, &app.gateway_base, "ann@example.com").await;
    let back_to = "https://app.example.com/signed-out";
    let (id, secret) = client(
        &app,
        ClientSpec {
            first_party: true,
            post_logout_redirect_uris: vec![back_to.into()],
            ..spec("App")
        },
    )
    .await;
    let secret = secret.unwrap();
    let mut browser = Browser::new();
    let (code, verifier) = code_for(&issuer, &mut browser, &id, "openid").await;
    let (_, tokens) = token(
        &app,
        &issuer,
        &id,
        &secret,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    let id_token = tokens["id_token"].as_str().unwrap();

    // An unregistered place to go back to is shown, never followed.
    for evil in [
        "https://evil.example.com/",
        "https://app.example.com/signed-out/x",
    ] {
        let page = browser
            .get(&format!(
                "{issuer}/oauth2/logout?id_token_hint={id_token}&post_logout_redirect_uri={}",
                urlencode(evil)
            ))
            .await;
        assert_eq!(
            (page.status, page.location.as_deref()),
            (StatusCode::BAD_REQUEST, None),
            "{evil}"
        );
    }
    // A hint this provider did not sign is refused too.
    let forged = format!("{}x", &id_token[..id_token.len() - 1]);
    let page = browser
        .get(&format!(
            "{issuer}/oauth2/logout?id_token_hint={forged}&post_logout_redirect_uri={}",
            urlencode(back_to)
        ))
        .await;
    assert_eq!(
        (page.status, page.location.as_deref()),
        (StatusCode::BAD_REQUEST, None)
    );

    let confirm = browser
        .get(&format!(
            "{issuer}/oauth2/logout?id_token_hint={id_token}&post_logout_redirect_uri={}&state=bye",
            urlencode(back_to)
        ))
        .await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
    assert!(confirm.body.contains("App"), "the page names the client");
    let (request, csrf) = (confirm.field("request"), confirm.field("csrf"));
    let done = browser
        .post(
            &format!("{issuer}/oauth2/logout"),
            &[
                ("request", &request),
                ("csrf", &csrf),
                ("decision", "sign_out"),
            ],
        )
        .await;
    assert_eq!(
        done.location.as_deref(),
        Some(&*format!("{back_to}?state=bye"))
    );
    assert!(!browser.cookies.contains_key("__Host-gatehouse-session"));

    // The session the sign-in opened for the app has ended with it...
    let info = app
        .http
        .get(format!("{issuer}/oauth2/userinfo"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), StatusCode::UNAUTHORIZED);
    // ...and the next application's request asks for the password.
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let page = browser
        .get(&format!(
            "{issuer}/oauth2/authorize?client_id={id}&redirect_uri={}&response_type=code&scope=openid&code_challenge={}&code_challenge_method=S256",
            urlencode(REDIRECT),
            challenge.as_str()
        ))
        .await;
    assert!(
        page.body.contains("<label for=\"password\">"),
        "{}",
        page.body
    );
}

/// Posts `form` to `path` below the issuer with Basic credentials.
async fn form_post(
    app: &TestApp,
    url: String,
    id: &str,
    secret: &str,
    form: &[(&str, &str)],
) -> (StatusCode, String) {
    let r = app
        .http
        .post(url)
        .basic_auth(id, Some(secret))
        .form(form)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

#[tokio::test]
async fn a_resource_server_introspects_tokens_and_a_client_revokes_its_own() {
    let (app, issuer) = provider().await;
    let user = support::register(&app.http, &app.gateway_base, "ann@example.com").await;
    let (id, secret) = client(
        &app,
        ClientSpec {
            first_party: true,
            ..spec("App")
        },
    )
    .await;
    let secret = secret.unwrap();
    let (api, api_secret) = client(&app, spec("Billing API")).await;
    let api_secret = api_secret.unwrap();
    let mut browser = Browser::new();
    let (code, verifier) =
        code_for(&issuer, &mut browser, &id, "openid email offline_access").await;
    let (_, tokens) = token(
        &app,
        &issuer,
        &id,
        &secret,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let introspect = |token: &str| {
        let token = token.to_owned();
        let (url, api, api_secret) = (
            format!("{issuer}/oauth2/introspect"),
            api.clone(),
            api_secret.clone(),
        );
        let app = &app;
        async move {
            let (status, body) = form_post(app, url, &api, &api_secret, &[("token", &token)]).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            serde_json::from_str::<Value>(&body).unwrap()
        }
    };

    let about = introspect(access).await;
    assert_eq!(about["active"], true);
    assert_eq!(about["token_type"], "access_token");
    assert_eq!(about["sub"], user["id"]);
    assert_eq!(about["client_id"], id.as_str());
    assert_eq!(about["scope"], "email offline_access openid");
    assert_eq!(introspect(refresh).await["token_type"], "refresh_token");
    assert_eq!(
        introspect("not-a-token").await,
        serde_json::json!({"active": false})
    );
    // Introspection needs a client's authentication.
    let (status, body) = form_post(
        &app,
        format!("{issuer}/oauth2/introspect"),
        &api,
        "wrong",
        &[("token", access)],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // Another client cannot revoke the token: the answer is the same, and
    // the token stays active.
    let revoke = format!("{issuer}/oauth2/revoke");
    let (status, _) = form_post(
        &app,
        revoke.clone(),
        &api,
        &api_secret,
        &[("token", refresh)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(introspect(refresh).await["active"], true);
    // Its own client can, which ends the session with its access token.
    let (status, _) = form_post(&app, revoke.clone(), &id, &secret, &[("token", refresh)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(introspect(refresh).await["active"], false);
    assert_eq!(introspect(access).await["active"], false);
    // An unknown token is answered alike.
    let (status, _) = form_post(&app, revoke, &id, &secret, &[("token", "unknown")]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn admins_manage_clients_users_revoke_consents_and_the_audit_log_has_it_all() {
    use reqwest::Method;
    use serde_json::json;
    let addr = support::closed_addr();
    let issuer = format!("http://{addr}");
    let public_url = issuer.clone();
    let app = TestApp::builder()
        .gateway(|g| g.listen = addr)
        .server(|s| s.public_url = public_url)
        .with_audit()
        .start()
        .await;
    let admin = app.admin("root@example.com").await;
    let ann = app.signed_in("ann@example.com").await;
    let body = json!({"name": "Wiki", "redirect_uris": [REDIRECT]});

    // Only those authz lets manage clients may.
    let r = app
        .through(Method::POST, "/v1/oidc/clients", &ann)
        .json(&body)
        .send()
        .await
        .unwrap();
    support::assert_problem(r, 403, "forbidden").await;
    let r = app
        .through(Method::POST, "/v1/oidc/clients", &admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let made: Value = r.json().await.unwrap();
    let id = made["client"]["client_id"].as_str().unwrap().to_owned();
    let first_secret = made["client_secret"].as_str().unwrap().to_owned();
    assert_eq!(
        made["client"]["grant_types"],
        json!(["authorization_code", "refresh_token", "client_credentials"])
    );
    let r = app
        .through(Method::POST, "/v1/oidc/clients", &admin)
        .json(&json!({"name": "Bad", "redirect_uris": ["http://evil.example.com/cb"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        support::assert_problem(r, 422, "validation_failed").await["field"],
        "redirect_uris"
    );

    let list: Value = app
        .through(Method::GET, "/v1/oidc/clients", &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["clients"][0]["client_id"], id.as_str());
    assert!(
        list.to_string().find(&first_secret).is_none(),
        "a secret is never shown again"
    );
    let r = app
        .through(Method::PUT, &format!("/v1/oidc/clients/{id}"), &admin)
        .json(&json!({"name": "Team Wiki", "redirect_uris": [REDIRECT], "scopes": ["openid", "email"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let read: Value = app
        .through(Method::GET, &format!("/v1/oidc/clients/{id}"), &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (read["name"].as_str(), &read["scopes"]),
        (Some("Team Wiki"), &json!(["email", "openid"]))
    );

    // Ann signs in to it and allows it; she sees and revokes the consent.
    let mut browser = Browser::new();
    let (code, verifier) = code_for(&issuer, &mut browser, &id, "openid email").await;
    let exchange = |secret: String| {
        let (code, verifier, id, issuer) =
            (code.clone(), verifier.clone(), id.clone(), issuer.clone());
        let app = &app;
        async move {
            token(
                app,
                &issuer,
                &id,
                &secret,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("code_verifier", &verifier),
                ],
            )
            .await
        }
    };
    // A new secret: the old one stops working at once.
    let rotated: Value = app
        .through(
            Method::POST,
            &format!("/v1/oidc/clients/{id}/secret"),
            &admin,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (status, body) = exchange(first_secret).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let (status, tokens) = exchange(rotated["client_secret"].as_str().unwrap().to_owned()).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");

    let consents: Value = app
        .through(Method::GET, "/v1/oidc/consents", &ann)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(consents["consents"][0]["client_name"], "Team Wiki");
    assert_eq!(
        consents["consents"][0]["scopes"],
        json!(["email", "openid"])
    );
    let r = app
        .through(Method::DELETE, &format!("/v1/oidc/consents/{id}"), &ann)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .through(Method::DELETE, &format!("/v1/oidc/consents/{id}"), &ann)
        .send()
        .await
        .unwrap();
    support::assert_problem(r, 404, "consent_not_found").await;
    let info = app
        .http
        .get(format!("{issuer}/oauth2/userinfo"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        info.status(),
        StatusCode::UNAUTHORIZED,
        "revoking consent ends the client's sessions"
    );
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let again = format!(
        "{issuer}/oauth2/authorize?client_id={id}&redirect_uri={}&response_type=code&scope=openid&code_challenge={}&code_challenge_method=S256",
        urlencode(REDIRECT),
        challenge.as_str()
    );
    assert!(
        browser.get(&again).await.body.contains("Allow Team Wiki?"),
        "asked again"
    );

    let r = app
        .through(Method::DELETE, &format!("/v1/oidc/clients/{id}"), &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        browser.get(&again).await.status,
        StatusCode::BAD_REQUEST,
        "a deleted client is unknown"
    );

    // Every step is on the audit log, about the client, by whom it was.
    let mut seen = Vec::new();
    for _ in 0..100 {
        let page: Value = app
            .through(Method::GET, "/v1/audit/events?limit=100", &admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"].as_str().unwrap().starts_with("auth.oidc."))
            .map(|e| {
                (
                    e["action"].as_str().unwrap().to_owned(),
                    e["subject"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        if seen.len() >= 8 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let actions: BTreeMap<String, usize> = seen.iter().fold(BTreeMap::new(), |mut m, (a, _)| {
        *m.entry(a.clone()).or_default() += 1;
        m
    });
    for action in [
        "auth.oidc.client_created",
        "auth.oidc.client_updated",
        "auth.oidc.client_secret_rotated",
        "auth.oidc.authorized",
        "auth.oidc.consent_given",
        "auth.oidc.token_issued",
        "auth.oidc.consent_revoked",
        "auth.oidc.client_deleted",
    ] {
        assert!(
            actions.contains_key(action),
            "{action} missing from {actions:?}"
        );
    }
    assert!(
        seen.iter()
            .all(|(_, subject)| *subject == format!("client:{id}")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn browser_apps_of_registered_origins_may_call_the_provider_and_no_others() {
    let addr = support::closed_addr();
    let issuer = format!("http://{addr}");
    let public_url = issuer.clone();
    let app = TestApp::builder()
        .gateway(|g| {
            g.listen = addr;
            g.cors.allowed_origins = vec!["https://console.example.com".into()];
        })
        .server(|s| s.public_url = public_url)
        .start()
        .await;
    let spa = "https://spa.example.com";
    client(
        &app,
        ClientSpec {
            public: true,
            web_origins: vec![spa.into()],
            ..spec("SPA")
        },
    )
    .await;
    let preflight = |path: &'static str, origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, format!("{issuer}{path}"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = |r: &reqwest::Response| {
        r.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    for path in ["/oauth2/token", "/oauth2/userinfo", "/oauth2/revoke"] {
        let r = preflight(path, spa).await.unwrap();
        assert_eq!(allowed(&r).as_deref(), Some(spa), "{path}");
        let r = preflight(path, "https://evil.example.com").await.unwrap();
        assert_eq!(allowed(&r), None, "{path}");
        // The gateway's own list is for the platform's API, not the provider.
        let r = preflight(path, "https://console.example.com")
            .await
            .unwrap();
        assert_eq!(allowed(&r), None, "{path}");
    }
    let get = |path: &'static str, origin: &'static str| {
        app.http
            .get(format!("{issuer}{path}"))
            .header("origin", origin)
            .send()
    };
    for path in ["/.well-known/openid-configuration", "/oauth2/jwks"] {
        let r = get(path, spa).await.unwrap();
        assert_eq!(
            (r.status(), allowed(&r).as_deref()),
            (StatusCode::OK, Some(spa)),
            "{path}"
        );
        assert_eq!(
            allowed(&get(path, "https://evil.example.com").await.unwrap()),
            None
        );
    }
    // The platform's API keeps the gateway's list.
    let r = get("/v1/auth/keys", "https://console.example.com")
        .await
        .unwrap();
    assert_eq!(allowed(&r).as_deref(), Some("https://console.example.com"));
    assert_eq!(allowed(&get("/v1/auth/keys", spa).await.unwrap()), None);
}

#[tokio::test]
async fn the_token_endpoint_is_rate_limited_per_client_address() {
    let addr = support::closed_addr();
    let issuer = format!("http://{addr}");
    let public_url = issuer.clone();
    let app = TestApp::builder()
        .gateway(|g| {
            g.listen = addr;
            g.rate_limit.per_ip_per_sec = 1;
            g.rate_limit.per_ip_burst = 5;
        })
        .server(|s| s.public_url = public_url)
        .start()
        .await;
    let (id, _) = client(&app, spec("App")).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let (status, _) = form_post(
            &app,
            format!("{issuer}/oauth2/token"),
            &id,
            "guessed-secret",
            &[("grant_type", "client_credentials")],
        )
        .await;
        statuses.push(status.as_u16());
    }
    // Guessing secrets spends the address's allowance like any request.
    assert_eq!(&statuses[..5], [401; 5]);
    assert!(statuses[5..].contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn a_new_password_signs_the_browser_out_of_the_hosted_pages() {
    let (app, issuer) = provider().await;
    let token = app.signed_in("ann@example.com").await;
    let (id, _) = client(
        &app,
        ClientSpec {
            first_party: true,
            ..spec("App")
        },
    )
    .await;
    let mut browser = Browser::new();
    code_for(&issuer, &mut browser, &id, "openid").await;
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let again = format!(
        "{issuer}/oauth2/authorize?client_id={id}&redirect_uri={}&response_type=code&scope=openid&code_challenge={}&code_challenge_method=S256",
        urlencode(REDIRECT),
        challenge.as_str()
    );
    assert!(
        browser
            .get(&again)
            .await
            .redirect_query()
            .contains_key("code"),
        "signed in"
    );

    let r = app
        .through(reqwest::Method::POST, "/v1/users/me/password", &token)
        .json(&serde_json::json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Auth learns of it from identity's event; then the pages ask again.
    for _ in 0..200 {
        if browser
            .get(&again)
            .await
            .body
            .contains("<label for=\"password\">")
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the browser session outlived the password it signed in with");
}

#[tokio::test]
async fn the_roles_scope_brings_the_users_roles_from_authz() {
    let addr = support::closed_addr();
    let issuer = format!("http://{addr}");
    let public_url = issuer.clone();
    let app = TestApp::builder()
        .gateway(|g| g.listen = addr)
        .server(|s| s.public_url = public_url)
        .with_authz()
        .start()
        .await;
    app.admin("ann@example.com").await;
    let (id, secret) = client(
        &app,
        ClientSpec {
            first_party: true,
            ..spec("App")
        },
    )
    .await;
    let mut browser = Browser::new();
    let (code, verifier) = code_for(&issuer, &mut browser, &id, "openid roles profile").await;
    let (status, tokens) = token(
        &app,
        &issuer,
        &id,
        secret.as_deref().unwrap(),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    use base64::Engine as _;
    let payload = tokens["id_token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert!(
        claims["roles"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("admin")),
        "{claims}"
    );
    assert_eq!(claims["name"], "Test User");
    let info: Value = app
        .http
        .get(format!("{issuer}/oauth2/userinfo"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["roles"], claims["roles"]);
    assert!(
        info.get("email").is_none(),
        "no email scope, no email: {info}"
    );
}

#[tokio::test]
async fn a_clients_id_token_key_is_published_when_it_is_registered() {
    use base64::Engine as _;
    let (app, issuer) = provider().await;
    support::register(&app.http, &app.gateway_base, "ann@example.com").await;
    let mut kids = BTreeMap::new();
    for alg in ["ES256", "EdDSA"] {
        let (id, secret) = client(
            &app,
            ClientSpec {
                first_party: true,
                id_token_signed_response_alg: Some(alg.into()),
                ..spec(alg)
            },
        )
        .await;
        kids.insert(alg, (id, secret.unwrap()));
    }
    // What a relying party fetches before anyone signs in, and keeps no
    // longer than verifiers keep keys.
    let r = app
        .http
        .get(format!("{issuer}/oauth2/jwks"))
        .send()
        .await
        .unwrap();
    let cache = r.headers()["cache-control"].to_str().unwrap().to_owned();
    let max_age: u64 = cache.split("max-age=").nth(1).unwrap().parse().unwrap();
    assert!(
        max_age <= gatehouse::auth::AuthConfig::default().key_cache_ttl_secs,
        "{cache}"
    );
    let jwks: Value = r.json().await.unwrap();
    let published: BTreeMap<String, String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_owned(),
                k["alg"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut browser = Browser::new();
    for (alg, (id, secret)) in kids {
        let (code, verifier) = code_for(&issuer, &mut browser, &id, "openid").await;
        let (status, tokens) = token(
            &app,
            &issuer,
            &id,
            &secret,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", &verifier),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        let header: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(
                    tokens["id_token"]
                        .as_str()
                        .unwrap()
                        .split('.')
                        .next()
                        .unwrap(),
                )
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], alg);
        let kid = header["kid"].as_str().unwrap();
        assert_eq!(
            published.get(kid).map(String::as_str),
            Some(alg),
            "{kid} was not in {published:?}"
        );
    }
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)]).unwrap()[2..].to_owned()
}

/// A backend signs in as itself with the client credentials grant, through
/// the `openidconnect` crate: its token reaches a team's route once authz
/// binds `client:<id>` a role there, and the upstream is told the client
/// (never a user); the platform's own APIs and userinfo refuse it;
/// introspection names the client; revoking it closes the route at once.
/// A public client, a client without the grant, and a user's scope are
/// refused, and so is a client as a group's member.
#[tokio::test]
async fn a_client_acts_for_itself_where_authz_lets_it_with_client_credentials() {
    use reqwest::Method;
    use serde_json::json;
    let addr = support::closed_addr();
    let issuer = format!("http://{addr}");
    let public_url = issuer.clone();
    let rule: gatehouse::gateway::config::RouteRule =
        crate::authz_admin::from_toml("path = \"/reports/{id}\"\nGET = \"reports:read\"\n");
    let app = TestApp::builder()
        .with_authz()
        .gateway(|g| {
            g.listen = addr;
            g.routes.push(gatehouse::gateway::config::RouteConfig {
                rules: vec![rule],
                ..gatehouse::gateway::config::RouteConfig::new(
                    "/reports",
                    "reports",
                    gatehouse::gateway::config::AuthPolicy::Required,
                )
            });
        })
        .server(|s| s.public_url = public_url)
        .start()
        .await;
    // The upstream says who the gateway told it the caller is.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let echo = axum::Router::new().fallback(|headers: http::HeaderMap| async move {
        let field = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        axum::Json(json!({
            "client": field("x-gatehouse-client-id"),
            "user": field("x-gatehouse-user-id"),
        }))
    });
    tokio::spawn(async move { axum::serve(listener, echo).await });
    app.register_instance("reports", upstream).await;
    let admin = app.admin("root@example.org").await;

    let (id, secret) = client(&app, spec("Nightly export")).await;
    let secret = secret.unwrap();
    let (rp, http) = relying_party(&issuer, &id, Some(&secret)).await;
    let granted = rp
        .exchange_client_credentials()
        .unwrap()
        .request_async(&http)
        .await
        .unwrap();
    assert!(granted.refresh_token().is_none());
    assert!(granted.extra_fields().id_token().is_none());
    let token = granted.access_token().secret().clone();

    // No binding yet: the route's permission is not the client's.
    let refused = app
        .through(Method::GET, "/reports/7", &token)
        .send()
        .await
        .unwrap();
    let refusal = support::assert_problem(refused, 403, "forbidden").await;
    assert_eq!(refusal["permission"], "reports:read");
    let role = app
        .through(Method::POST, "/v1/authz/roles", &admin)
        .json(&json!({"name": "report-reader", "permissions": ["reports:read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(role.status(), 201);
    let bound = app
        .through(Method::POST, "/v1/authz/bindings", &admin)
        .json(&json!({"subject": format!("client:{id}"), "role": "report-reader"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bound.status(), 201, "{}", bound.text().await.unwrap());
    crate::authz_admin::within_a_second(&app, "/reports/7", &token, 200).await;
    // A client holds its own bindings, never a group's.
    let group: Value = app
        .through(Method::POST, "/v1/authz/groups", &admin)
        .json(&json!({"name": "exporters"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let joined = app
        .through(
            Method::POST,
            &format!("/v1/authz/groups/{}/members", group["id"].as_str().unwrap()),
            &admin,
        )
        .json(&json!({"member": format!("client:{id}")}))
        .send()
        .await
        .unwrap();
    support::assert_problem(joined, 422, "validation_failed").await;
    let told: Value = app
        .through(Method::GET, "/reports/7", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(told, json!({"client": id, "user": null}));

    // The platform's APIs serve users; userinfo speaks of one.
    support::assert_problem(app.me(&token).await, 403, "client_token_refused").await;
    let userinfo = app
        .http
        .get(format!("{issuer}/oauth2/userinfo"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(userinfo.status(), 401);

    // A resource server learns whose token it is.
    let (api, api_secret) = client(&app, spec("Reports API")).await;
    let api_secret = api_secret.unwrap();
    let introspect = format!("{issuer}/oauth2/introspect");
    let (status, body) = form_post(
        &app,
        introspect.clone(),
        &api,
        &api_secret,
        &[("token", &token)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let about: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(about["active"], true);
    assert_eq!(about["sub"], id.as_str());
    assert_eq!(about["client_id"], id.as_str());
    assert!(about.get("scope").is_none(), "{about}");

    // Revoked by its client: inactive, and the gateway refuses it at once.
    let (status, _) = form_post(
        &app,
        format!("{issuer}/oauth2/revoke"),
        &id,
        &secret,
        &[("token", &token)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = form_post(&app, introspect, &api, &api_secret, &[("token", &token)]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["active"],
        false
    );
    crate::authz_admin::within_a_second(&app, "/reports/7", &token, 401).await;

    // Refused: a user's scope, a public client, a client without the grant.
    let url = format!("{issuer}/oauth2/token");
    let (status, body) = form_post(
        &app,
        url.clone(),
        &id,
        &secret,
        &[("grant_type", "client_credentials"), ("scope", "openid")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "invalid_scope"
    );
    let (public, _) = client(
        &app,
        ClientSpec {
            public: true,
            ..spec("Browser app")
        },
    )
    .await;
    let answer = app
        .http
        .post(&url)
        .form(&[("grant_type", "client_credentials"), ("client_id", &public)])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert_eq!(
        answer.json::<Value>().await.unwrap()["error"],
        "unauthorized_client"
    );
    let (code_only, code_secret) = client(
        &app,
        ClientSpec {
            grant_types: Some(vec!["authorization_code".into()]),
            ..spec("Web app")
        },
    )
    .await;
    let (status, body) = form_post(
        &app,
        url,
        &code_only,
        &code_secret.unwrap(),
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "unauthorized_client"
    );
}
