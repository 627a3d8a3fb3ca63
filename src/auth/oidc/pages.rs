//! The hosted pages: server-rendered HTML (templates under
//! `templates/oidc/`, escaped by askama), with no script at all, and the
//! headers every page carries.

use askama::Template;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The pages' only other resource.
pub const STYLE: &str = include_str!("../../../templates/oidc/style.css");

/// No script, no frames, no plug-ins; styles and forms from here only.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

#[derive(Template)]
#[template(path = "oidc/signin.html")]
pub struct SignIn {
    pub client_name: String,
    pub request: String,
    pub csrf: String,
    pub email: String,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "oidc/consent.html")]
pub struct Consent {
    pub client_name: String,
    pub user: String,
    /// What each scope asked for lets the client have, in words.
    pub scopes: Vec<&'static str>,
    pub request: String,
    pub csrf: String,
}

#[derive(Template)]
#[template(path = "oidc/logout.html")]
pub struct Logout {
    pub client_name: Option<String>,
    pub request: String,
    pub csrf: String,
}

#[derive(Template)]
#[template(path = "oidc/message.html")]
pub struct Message {
    pub title: String,
    pub message: String,
    pub error: bool,
}

impl Message {
    /// The error page: shown, never redirected.
    pub fn error(message: impl Into<String>) -> Self {
        Message {
            title: "Sign-in cannot go on".into(),
            message: message.into(),
            error: true,
        }
    }
}

/// A scope in the words of the consent page.
pub fn scope_words(scope: &str) -> Option<&'static str> {
    Some(match scope {
        "openid" => "know who you are on gatehouse",
        "profile" => "see your name",
        "email" => "see your email address",
        "offline_access" => "stay signed in when you are away",
        "roles" => "see your roles",
        _ => return None,
    })
}

/// `page` as a response with `status`, and headers that keep it out of
/// frames and caches.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => with_page_headers(
            (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                html,
            )
                .into_response(),
        ),
        Err(e) => {
            tracing::error!(error = %e, "a hosted page did not render");
            with_page_headers(StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
    }
}

/// Adds the pages' security headers to `response` (redirects included).
pub fn with_page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_page_shows_is_escaped() {
        let html = SignIn {
            client_name: "<script>alert(1)</script>".into(),
            request: "r\"><x".into(),
            csrf: "c".into(),
            email: "a@b".into(),
            error: Some("<b>".into()),
        }
        .render()
        .unwrap();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("alert(1)"), "the name is shown, escaped");
        assert!(!html.contains("r\"><x"));
        assert!(html.contains("<label for=\"email\">"));
    }
}
