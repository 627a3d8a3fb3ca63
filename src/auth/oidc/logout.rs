//! RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0): a
//! confirmation page, then the browser session ends with the sessions its
//! sign-ins opened, and the browser goes back to a post-logout redirect
//! URI registered on the client, or sees that it is signed out. A URI that
//! is not registered is shown on the error page, never followed.

use axum::http::{HeaderMap, StatusCode};
use diesel::Connection as _;
use serde::{Deserialize, Serialize};

use super::authorize::with_query;
use super::browser::{self, SESSION_COOKIE};
use super::flow::Answer;
use super::pages::{self, Message};
use super::service::Provider;
use super::store;
use crate::auth::error::AuthError;
use crate::auth::sessions::end_session;

/// The logout endpoint's parameters, as sent.
#[derive(Debug, Default, Deserialize)]
pub struct LogoutParams {
    pub id_token_hint: Option<String>,
    pub client_id: Option<String>,
    pub post_logout_redirect_uri: Option<String>,
    pub state: Option<String>,
}

/// The confirmation page's form.
#[derive(Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    pub request: String,
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub decision: String,
}

/// A checked logout request, sealed into the confirmation form.
#[derive(Serialize, Deserialize)]
struct Checked {
    redirect: Option<String>,
    state: Option<String>,
    csrf: String,
    expires_at: i64,
}

const LOGOUT_PREFIX: &[u8] = b"gatehouse.oidc.logout.v1\0";

impl Provider {
    /// `GET /oauth2/logout`: the confirmation page, or the error page.
    pub async fn logout_page(&self, params: LogoutParams, headers: &HeaderMap) -> Answer {
        match self.check_logout(params, headers).await {
            Ok(Ok((checked, client_name, set_csrf))) => {
                let csrf = checked.csrf.clone();
                match self.seal_form(LOGOUT_PREFIX, &checked) {
                    Ok(request) => Answer::page(
                        StatusCode::OK,
                        &pages::Logout {
                            client_name,
                            request,
                            csrf,
                        },
                    )
                    .with_cookies(set_csrf),
                    Err(e) => e.into(),
                }
            }
            Ok(Err(message)) => Answer::error(StatusCode::BAD_REQUEST, message),
            Err(e) => e.into(),
        }
    }

    /// The request's client (by `client_id`, or the `aud` of an ID token
    /// this provider signed) and its post-logout redirect URI, which must
    /// be registered on it.
    async fn check_logout(
        &self,
        params: LogoutParams,
        headers: &HeaderMap,
    ) -> Result<Result<(Checked, Option<String>, Option<http::HeaderValue>), String>, AuthError>
    {
        let hinted =
            match params.id_token_hint.as_deref() {
                Some(hint) if hint.len() <= 8192 => {
                    let claims = self.auth.keys().read_id_token(hint).await?;
                    match claims {
                        Some(c) if c["iss"].as_str() == Some(&self.issuer) => {
                            c["aud"].as_str().map(str::to_owned)
                        }
                        _ => return Ok(Err(
                            "The sign-out request carries an ID token this provider did not issue."
                                .into(),
                        )),
                    }
                }
                Some(_) => {
                    return Ok(Err(
                        "The sign-out request's id_token_hint is too long.".into()
                    ));
                }
                None => None,
            };
        let client_id = match (params.client_id, hinted) {
            (Some(given), Some(hinted)) if given != hinted => {
                return Ok(Err(
                    "The sign-out request names two different applications.".into(),
                ));
            }
            (given, hinted) => given.or(hinted),
        };
        let client = match client_id.as_deref() {
            Some(id) if id.len() <= 128 => self.clients.find(id).await?,
            _ => None,
        };
        if client_id.is_some() && client.is_none() {
            return Ok(Err(
                "The application is not registered with this provider.".into()
            ));
        }
        if let Some(uri) = &params.post_logout_redirect_uri
            && !client
                .as_ref()
                .is_some_and(|c| c.post_logout_redirect_uri(uri))
        {
            return Ok(Err(
                "The application asked to be sent after sign-out to an address it did not register."
                    .into(),
            ));
        }
        if params.state.as_ref().is_some_and(|s| s.len() > 1024) {
            return Ok(Err("The sign-out request's state is too long.".into()));
        }
        let (csrf, set_csrf) = browser::csrf(headers);
        let expires_at = self.auth.clock.now().timestamp()
            + i64::try_from(self.config.page_ttl_secs).unwrap_or(600);
        Ok(Ok((
            Checked {
                redirect: params.post_logout_redirect_uri,
                state: params.state,
                csrf,
                expires_at,
            },
            client.map(|c| c.name),
            set_csrf,
        )))
    }

    /// `POST /oauth2/logout`: the confirmation page's answer.
    pub async fn logout(&self, form: LogoutForm, headers: &HeaderMap) -> Answer {
        let checked: Option<Checked> = self.open_form(LOGOUT_PREFIX, &form.request);
        let Some(checked) = checked.filter(|c| {
            c.expires_at > self.auth.clock.now().timestamp()
                && c.csrf == form.csrf
                && browser::csrf_matches(headers, &form.csrf)
        }) else {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                "This page has expired, or was not opened in this browser.",
            );
        };
        let back = |checked: &Checked| {
            checked.redirect.as_deref().map(|uri| match &checked.state {
                Some(state) => with_query(uri, &[("state", state)]),
                None => uri.to_owned(),
            })
        };
        if form.decision != "sign_out" {
            return match back(&checked) {
                Some(to) => Answer::redirect(&to),
                None => Answer::page(
                    StatusCode::OK,
                    &Message {
                        title: "Still signed in".into(),
                        message: "You are still signed in. You may close this page.".into(),
                        error: false,
                    },
                ),
            };
        }
        if let Err(e) = self.end_browser_session(headers).await {
            return e.into();
        }
        let answer = match back(&checked) {
            Some(to) => Answer::redirect(&to),
            None => Answer::page(
                StatusCode::OK,
                &Message {
                    title: "Signed out".into(),
                    message: "You are signed out of gatehouse on this browser.".into(),
                    error: false,
                },
            ),
        };
        answer.with_cookies([browser::clear_cookie(SESSION_COOKIE)])
    }

    /// Ends the browser session of the request's cookie, if live, and the
    /// sessions its sign-ins opened.
    async fn end_browser_session(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let Some(session) = self.browser_session(headers).await? else {
            return Ok(());
        };
        let now = self.auth.clock.now();
        let by = self.auth.tokens_expire_by(now);
        let ended = self
            .auth
            .db
            .run(move |c| {
                c.transaction(|c| {
                    store::end_browser_session(c, &session.id, now.naive_utc())?;
                    let mut ended = 0;
                    for id in store::sessions_of_browser(c, &session.id)? {
                        ended += usize::from(end_session(c, &id, "logout", now, by)?);
                    }
                    Ok::<_, AuthError>(ended)
                })
            })
            .await?;
        if ended > 0 {
            self.auth.relay.wake();
        }
        tracing::info!(sessions = ended, "signed out of the hosted pages");
        Ok(())
    }
}
