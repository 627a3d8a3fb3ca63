//! The browser's side of the provider: its cookies, the CSRF token of its
//! forms, the sealed authorization request the pages carry, and the
//! browser session that lets a second application sign in without asking
//! again.
//!
//! Cookies carry the `__Host-` prefix and are always `Secure`, `HttpOnly`
//! and `SameSite=Lax`: browsers keep `Secure` cookies from
//! `http://127.0.0.1` and `http://localhost`, and the issuer is refused at
//! start when it is plain http elsewhere. The pages' forms are checked
//! twice: the form's `csrf` field must be the browser's CSRF cookie, and
//! the sealed request must have been made for that same cookie.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use cookie::{Cookie, SameSite};
use http::HeaderMap;
use http::header::{COOKIE, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::authorize::Pending;
use super::clients::{random_token, secret_hash};
use super::service::Provider;
use super::store::{self, BrowserSessionRow};
use crate::auth::error::AuthError;
use crate::middleware::ids::{SessionId, UserId};

pub const SESSION_COOKIE: &str = "__Host-gatehouse-session";
pub const CSRF_COOKIE: &str = "__Host-gatehouse-csrf";
pub const DEVICE_COOKIE: &str = "__Host-gatehouse-device";

/// How long the device cookie (see identity's throttle) is kept.
const DEVICE_COOKIE_DAYS: i64 = 365;

/// Marks what was sealed as an authorization request of the pages, apart
/// from anything else the key seals.
const PENDING_PREFIX: &[u8] = b"gatehouse.oidc.pending.v1\0";

/// The value of cookie `name` the request carries, if any.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 256)
}

/// A `Set-Cookie` value that removes cookie `name`.
pub fn clear_cookie(name: &str) -> HeaderValue {
    set_cookie(name, "", Some(chrono::Duration::zero()))
}

/// A `Set-Cookie` value for `name`, kept `max_age` (a browser-session
/// cookie when `None`; removed when zero).
pub fn set_cookie(name: &str, value: &str, max_age: Option<chrono::Duration>) -> HeaderValue {
    let mut c = Cookie::build((name.to_owned(), value.to_owned()))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax);
    if let Some(age) = max_age {
        c = c.max_age(cookie::time::Duration::seconds(age.num_seconds().max(0)));
    }
    HeaderValue::from_str(&c.build().to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub fn device_cookie(token: &str) -> HeaderValue {
    set_cookie(
        DEVICE_COOKIE,
        token,
        Some(chrono::Duration::days(DEVICE_COOKIE_DAYS)),
    )
}

/// The browser's CSRF token, and whether it must be set (it had none).
pub fn csrf(headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    match cookie(headers, CSRF_COOKIE) {
        Some(token) => (token, None),
        None => {
            let token = random_token(24);
            let header = set_cookie(CSRF_COOKIE, &token, None);
            (token, Some(header))
        }
    }
}

/// Whether `field` (a form's `csrf`) is the browser's CSRF cookie.
pub fn csrf_matches(headers: &HeaderMap, field: &str) -> bool {
    cookie(headers, CSRF_COOKIE).is_some_and(|c| {
        c.len() == field.len()
            && c.bytes()
                .zip(field.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

/// A live browser session.
#[derive(Debug, Clone)]
pub struct BrowserSession {
    pub id: String,
    pub user: UserId,
    pub auth_time: DateTime<Utc>,
    pub amr: Vec<String>,
}

impl BrowserSession {
    fn from_row(row: BrowserSessionRow) -> Result<Self, AuthError> {
        Ok(BrowserSession {
            user: UserId::parse(&row.user_id).map_err(|e| AuthError::Internal(e.to_string()))?,
            auth_time: row.auth_time.and_utc(),
            amr: super::id_token::methods(&row.amr),
            id: row.id,
        })
    }
}

impl Provider {
    /// `pending` sealed for a form field.
    pub(super) fn seal_pending(&self, pending: &Pending) -> Result<String, AuthError> {
        self.seal_form(PENDING_PREFIX, pending)
    }

    /// What [`Provider::seal_pending`] sealed, if it is unaltered, made for
    /// the browser's CSRF cookie, and not yet expired.
    pub(super) fn open_pending(&self, sealed: &str, headers: &HeaderMap) -> Option<Pending> {
        let pending: Pending = self.open_form(PENDING_PREFIX, sealed)?;
        (pending.expires_at > self.auth.clock.now().timestamp()
            && csrf_matches(headers, &pending.csrf))
        .then_some(pending)
    }

    /// `value` sealed for a form field, marked by `prefix` as what it is.
    pub(super) fn seal_form(
        &self,
        prefix: &[u8],
        value: &impl Serialize,
    ) -> Result<String, AuthError> {
        let mut plain = prefix.to_vec();
        serde_json::to_writer(&mut plain, value).map_err(|e| AuthError::Internal(e.to_string()))?;
        Ok(URL_SAFE_NO_PAD.encode(self.auth.kek.seal(&plain)?))
    }

    /// What [`Provider::seal_form`] sealed with `prefix`, if it is unaltered.
    pub(super) fn open_form<T: DeserializeOwned>(&self, prefix: &[u8], sealed: &str) -> Option<T> {
        let bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        let plain = self.auth.kek.open(&bytes).ok()?;
        serde_json::from_slice(plain.strip_prefix(prefix)?).ok()
    }

    /// The browser session the request's cookie names, if it is live.
    pub(super) async fn browser_session(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<BrowserSession>, AuthError> {
        let Some(token) = cookie(headers, SESSION_COOKIE) else {
            return Ok(None);
        };
        let token_hash = secret_hash(&token);
        let now = self.auth.clock.now().naive_utc();
        self.auth
            .db
            .run(move |c| store::browser_session(c, &token_hash, now))
            .await?
            .map(BrowserSession::from_row)
            .transpose()
    }

    /// Opens a browser session for `user`, just signed in by `amr`;
    /// answers it and its `Set-Cookie`.
    pub(super) async fn open_browser_session(
        &self,
        user: UserId,
        amr: &[&str],
    ) -> Result<(BrowserSession, HeaderValue), AuthError> {
        let now = self.auth.clock.now();
        let ttl = chrono::Duration::seconds(
            i64::try_from(self.config.browser_session_ttl_secs).unwrap_or(43_200),
        );
        let token = random_token(32);
        let row = BrowserSessionRow {
            id: SessionId::now_v7().to_string(),
            token_hash: secret_hash(&token),
            user_id: user.to_string(),
            auth_time: now.naive_utc(),
            amr: amr.join(" "),
            expires_at: (now + ttl).naive_utc(),
            ended_at: None,
        };
        let stored = row.clone();
        self.auth
            .db
            .run(move |c| store::insert_browser_session(c, &stored))
            .await?;
        let header = set_cookie(SESSION_COOKIE, &token, Some(ttl));
        Ok((BrowserSession::from_row(row)?, header))
    }
}
