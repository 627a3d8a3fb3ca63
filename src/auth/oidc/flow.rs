//! The authorization flow a browser goes through: from the request, over
//! the sign-in and consent pages when they are needed, to a code (or an
//! error) sent back to the client's redirect URI with the issuer (RFC
//! 9207).

use std::collections::BTreeSet;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use diesel::Connection as _;
use serde::Deserialize;

use super::authorize::{self, AuthorizeParams, Pending, Refusal, with_query};
use super::browser::{self, BrowserSession, DEVICE_COOKIE};
use super::clients::{Client, random_token, secret_hash};
use super::pages::{self, Message};
use super::service::Provider;
use super::store::{self, CodeRow};
use crate::auth::error::AuthError;
use crate::auth::events::{self, oidc_event};
use crate::kernel::outbox;

/// What the browser gets next, with the cookies to set.
pub struct Answer {
    response: Response,
    cookies: Vec<HeaderValue>,
}

impl Answer {
    pub(super) fn page(status: StatusCode, page: &impl askama::Template) -> Self {
        Answer {
            response: pages::render(status, page),
            cookies: Vec::new(),
        }
    }

    pub(super) fn redirect(to: &str) -> Self {
        Answer {
            response: pages::with_page_headers(Redirect::to(to).into_response()),
            cookies: Vec::new(),
        }
    }

    /// The error page, with `status`.
    pub fn error(status: StatusCode, message: impl Into<String>) -> Self {
        Answer::page(status, &Message::error(message))
    }

    pub(super) fn with_cookies(mut self, cookies: impl IntoIterator<Item = HeaderValue>) -> Self {
        self.cookies.extend(cookies);
        self
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = self.response;
        for cookie in self.cookies {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        response
    }
}

impl From<AuthError> for Answer {
    fn from(e: AuthError) -> Self {
        e.log_if_ours();
        match e {
            AuthError::Unavailable(_) | AuthError::Overloaded { .. } => Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Signing in is not possible right now. Try again in a moment.",
            ),
            _ => Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong on our side. Try again from the application.",
            ),
        }
    }
}

/// The sign-in page's form.
#[derive(Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    pub request: String,
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub password: String,
}

/// The consent page's form.
#[derive(Deserialize)]
pub struct ConsentForm {
    #[serde(default)]
    pub request: String,
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub decision: String,
}

const STALE_FORM: &str = "This page has expired, or was not opened in this browser. \
                          Go back to the application and sign in again.";

impl Provider {
    /// `GET` or `POST /oauth2/authorize`.
    pub async fn authorize(&self, params: AuthorizeParams, headers: &HeaderMap) -> Answer {
        match self.try_authorize(params, headers).await {
            Ok(answer) => answer,
            Err(e) => e.into(),
        }
    }

    async fn try_authorize(
        &self,
        params: AuthorizeParams,
        headers: &HeaderMap,
    ) -> Result<Answer, AuthError> {
        let client = match params.client_id.as_deref() {
            Some(id) if !id.is_empty() && id.len() <= 128 => self.clients.find(id).await?,
            _ => None,
        };
        let now = self.auth.clock.now().timestamp();
        let mut pending = match authorize::check(params, client.as_ref(), now) {
            Ok(pending) => pending,
            Err(Refusal::Page(message)) => {
                return Ok(Answer::error(StatusCode::BAD_REQUEST, message));
            }
            Err(Refusal::Redirect {
                redirect_uri,
                state,
                error,
                description,
            }) => return Ok(self.refuse_to(&redirect_uri, state.as_deref(), error, &description)),
        };
        let Some(client) = client else {
            return Err(AuthError::Internal(
                "a checked request without its client".into(),
            ));
        };
        let (csrf, set_csrf) = browser::csrf(headers);
        pending.csrf = csrf;
        pending.expires_at = now + i64::try_from(self.config.page_ttl_secs).unwrap_or(600);
        let session = self.browser_session(headers).await?;
        Ok(self
            .proceed(pending, &client, session)
            .await?
            .with_cookies(set_csrf))
    }

    /// `POST /oauth2/signin`.
    pub async fn sign_in(&self, form: SignInForm, headers: &HeaderMap) -> Answer {
        let Some((mut pending, client)) = self.resume(&form.request, &form.csrf, headers).await
        else {
            return Answer::error(StatusCode::BAD_REQUEST, STALE_FORM);
        };
        let device = browser::cookie(headers, DEVICE_COOKIE);
        let verified = self
            .auth
            .verify_credentials(form.email.trim(), &form.password, device.as_deref())
            .await;
        let again = |status, error: String| {
            Answer::page(
                status,
                &pages::SignIn {
                    client_name: client.name.clone(),
                    request: form.request.clone(),
                    csrf: pending.csrf.clone(),
                    email: form.email.trim().to_owned(),
                    error: Some(error),
                },
            )
        };
        let verified = match verified {
            Ok(verified) => verified,
            Err(AuthError::InvalidCredentials) => {
                return again(
                    StatusCode::UNAUTHORIZED,
                    "The email or password is wrong.".into(),
                );
            }
            Err(AuthError::Invalid { .. }) => {
                return again(
                    StatusCode::BAD_REQUEST,
                    "Enter your email address and your password.".into(),
                );
            }
            Err(AuthError::TooManyAttempts { retry_after_secs }) => {
                return again(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "Too many failed sign-ins. Wait {} before trying again.",
                        wait_words(retry_after_secs)
                    ),
                );
            }
            Err(AuthError::Disabled) => {
                return again(StatusCode::FORBIDDEN, "This account is disabled.".into());
            }
            Err(e) => return e.into(),
        };
        let result = async {
            let (session, set_session) = self.open_browser_session(verified.user, &["pwd"]).await?;
            pending.signed_in_as = Some(session.id.clone());
            let answer = self.proceed(pending, &client, Some(session)).await?;
            Ok::<_, AuthError>(
                answer.with_cookies(
                    std::iter::once(set_session)
                        .chain(verified.device_token.as_deref().map(browser::device_cookie)),
                ),
            )
        }
        .await;
        result.unwrap_or_else(Answer::from)
    }

    /// `POST /oauth2/consent`.
    pub async fn consent(&self, form: ConsentForm, headers: &HeaderMap) -> Answer {
        let Some((pending, client)) = self.resume(&form.request, &form.csrf, headers).await else {
            return Answer::error(StatusCode::BAD_REQUEST, STALE_FORM);
        };
        let result = async {
            let session = self.browser_session(headers).await?;
            let Some(session) = session.filter(|s| fresh_enough(s, &pending)) else {
                return self.proceed(pending, &client, None).await;
            };
            match form.decision.as_str() {
                "allow" => {
                    let (user, client_id, scope, now) = (
                        session.user.to_string(),
                        client.id.clone(),
                        pending.scope.clone(),
                        self.auth.clock.now(),
                    );
                    self.auth
                        .db
                        .run(move |c| {
                            c.transaction(|c| {
                                let granted = store::consent(c, &user, &client_id)?;
                                let all: BTreeSet<&str> = granted
                                    .as_deref()
                                    .unwrap_or_default()
                                    .split(' ')
                                    .chain(scope.iter().map(String::as_str))
                                    .filter(|s| !s.is_empty())
                                    .collect();
                                let all = all.into_iter().collect::<Vec<_>>().join(" ");
                                store::set_consent(c, &user, &client_id, &all, now.naive_utc())?;
                                let event =
                                    oidc_event(&events::OIDC_CONSENT_GIVEN, &client_id, |e| {
                                        e.user_id = user.clone();
                                        e.scope = all.clone();
                                    });
                                outbox::enqueue(c, &event, now)?;
                                Ok::<_, AuthError>(())
                            })
                        })
                        .await?;
                    self.issue_code(&pending, &session).await
                }
                _ => Ok(self.refuse_to(
                    &pending.redirect_uri,
                    pending.state.as_deref(),
                    "access_denied",
                    "the user did not allow the request",
                )),
            }
        }
        .await;
        result.unwrap_or_else(Answer::from)
    }

    /// The request a page's form carries and its client, if the form is
    /// the browser's own, unaltered and in time, and the client is still
    /// registered.
    async fn resume(
        &self,
        sealed: &str,
        csrf: &str,
        headers: &HeaderMap,
    ) -> Option<(Pending, Client)> {
        if !browser::csrf_matches(headers, csrf) {
            return None;
        }
        let pending = self.open_pending(sealed, headers)?;
        let client = self.clients.find(&pending.client_id).await.ok()??;
        Some((pending, client))
    }

    /// The next step for `pending` in a browser with `session`: sign-in,
    /// consent, or the code.
    async fn proceed(
        &self,
        pending: Pending,
        client: &Client,
        session: Option<BrowserSession>,
    ) -> Result<Answer, AuthError> {
        let Some(session) = session.filter(|s| fresh_enough(s, &pending)) else {
            if pending.no_prompt {
                return Ok(self.refuse_to(
                    &pending.redirect_uri,
                    pending.state.as_deref(),
                    "login_required",
                    "the user is not signed in",
                ));
            }
            return Ok(Answer::page(
                StatusCode::OK,
                &pages::SignIn {
                    client_name: client.name.clone(),
                    request: self.seal_pending(&pending)?,
                    csrf: pending.csrf.clone(),
                    email: pending.login_hint.clone().unwrap_or_default(),
                    error: None,
                },
            ));
        };
        if self.needs_consent(&pending, client, &session).await? {
            if pending.no_prompt {
                return Ok(self.refuse_to(
                    &pending.redirect_uri,
                    pending.state.as_deref(),
                    "consent_required",
                    "the user has not allowed this client these scopes",
                ));
            }
            let user = self.user(session.user).await?;
            return Ok(Answer::page(
                StatusCode::OK,
                &pages::Consent {
                    client_name: client.name.clone(),
                    user: user.email,
                    scopes: pending
                        .scope
                        .iter()
                        .filter_map(|s| pages::scope_words(s))
                        .collect(),
                    request: self.seal_pending(&pending)?,
                    csrf: pending.csrf.clone(),
                },
            ));
        }
        self.issue_code(&pending, &session).await
    }

    /// Whether the user must be asked before `client` gets `pending`'s scopes.
    async fn needs_consent(
        &self,
        pending: &Pending,
        client: &Client,
        session: &BrowserSession,
    ) -> Result<bool, AuthError> {
        if client.first_party {
            return Ok(false);
        }
        if pending.ask_consent {
            return Ok(true);
        }
        let (user, client_id) = (session.user.to_string(), client.id.clone());
        let granted = self
            .auth
            .db
            .run(move |c| store::consent(c, &user, &client_id))
            .await?;
        let granted: BTreeSet<&str> = granted.as_deref().unwrap_or_default().split(' ').collect();
        Ok(!pending.scope.iter().all(|s| granted.contains(s.as_str())))
    }

    /// Stores a code for `pending` and sends the browser back with it.
    async fn issue_code(
        &self,
        pending: &Pending,
        session: &BrowserSession,
    ) -> Result<Answer, AuthError> {
        let code = random_token(32);
        let now = self.auth.clock.now();
        let ttl = self.config.code_ttl_secs.clamp(1, 60);
        let row = CodeRow {
            code_hash: secret_hash(&code),
            client_id: pending.client_id.clone(),
            user_id: session.user.to_string(),
            browser_session_id: session.id.clone(),
            redirect_uri: pending.redirect_uri.clone(),
            code_challenge: pending.code_challenge.clone(),
            nonce: pending.nonce.clone(),
            scope: pending.scope.iter().cloned().collect::<Vec<_>>().join(" "),
            auth_time: session.auth_time.naive_utc(),
            amr: session.amr.join(" "),
            expires_at: (now + chrono::Duration::seconds(ttl as i64)).naive_utc(),
            used_at: None,
            session_id: None,
        };
        let event = oidc_event(&events::OIDC_AUTHORIZED, &row.client_id, |e| {
            e.user_id = row.user_id.clone();
            e.scope = row.scope.clone();
        });
        self.auth
            .db
            .run(move |c| {
                c.transaction(|c| {
                    store::insert_code(c, &row)?;
                    outbox::enqueue(c, &event, now)?;
                    Ok::<_, AuthError>(())
                })
            })
            .await?;
        self.auth.relay.wake();
        let mut pairs = vec![("code", code.as_str())];
        if let Some(state) = &pending.state {
            pairs.push(("state", state));
        }
        pairs.push(("iss", &self.issuer));
        Ok(Answer::redirect(&with_query(&pending.redirect_uri, &pairs)))
    }

    /// Sends the browser back to the client with an error (RFC 6749 §4.1.2.1).
    fn refuse_to(
        &self,
        redirect_uri: &str,
        state: Option<&str>,
        error: &str,
        description: &str,
    ) -> Answer {
        let mut pairs = vec![("error", error), ("error_description", description)];
        if let Some(state) = state {
            pairs.push(("state", state));
        }
        pairs.push(("iss", &self.issuer));
        Answer::redirect(&with_query(redirect_uri, &pairs))
    }
}

/// Whether `session` signed in recently enough for `pending`: for it, or
/// within its `max_age`.
fn fresh_enough(session: &BrowserSession, pending: &Pending) -> bool {
    pending.signed_in_as.as_ref() == Some(&session.id)
        || (!pending.fresh_login
            && pending
                .signed_in_since
                .is_none_or(|since| session.auth_time.timestamp() >= since))
}

/// A wait in words: "12 seconds", "3 minutes".
fn wait_words(secs: u64) -> String {
    match secs {
        0..=1 => "a second".into(),
        2..=119 => format!("{secs} seconds"),
        _ => format!("{} minutes", secs.div_ceil(60)),
    }
}
