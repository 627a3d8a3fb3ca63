//! Responses the gateway answers itself for a moment. On a route that keeps
//! public responses (`keep_public`: the provider's discovery document and
//! JWKS among the built-in routes), a `GET` that carries no credential,
//! cookie or origin, answered 200 with `Cache-Control: public, max-age=N`,
//! no cookie and a small body, is kept for [`KEEP_AT_MOST`] (or N seconds
//! when shorter), and the same `GET` is answered from it meanwhile, with
//! `Age`. Relying parties fetch those documents often; a kept copy spares
//! each fetch the hop to auth. Kept so briefly, it never makes a new key
//! or setting wait longer than the upstream's own `max-age` says.
//!
//! A request with `Origin` always goes upstream: the provider's CORS
//! answer depends on it. What goes upstream is counted, limited and
//! checked as ever; so is what is answered from here.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse as _, Response};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, request};

use crate::gateway::fault::Fault;
use crate::kernel::locks;

/// The longest a response is kept, whatever its `max-age`.
pub const KEEP_AT_MOST: Duration = crate::kernel::http::KEPT_AT_THE_EDGE;
/// Most responses kept at once.
const ENTRIES: usize = 64;
/// The largest body kept.
const LARGEST: usize = 64 * 1024;

/// The responses kept, by path and query.
#[derive(Default)]
pub struct Kept {
    entries: RwLock<HashMap<Box<str>, Entry>>,
}

struct Entry {
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
    until: Instant,
}

impl Kept {
    /// The key a request is kept under, when it may be answered from here:
    /// a `GET` without `Authorization`, `Cookie` or `Origin`.
    pub fn key(head: &request::Parts) -> Option<&str> {
        let headers = &head.headers;
        (head.method == Method::GET
            && !headers.contains_key(header::AUTHORIZATION)
            && !headers.contains_key(header::COOKIE)
            && !headers.contains_key(header::ORIGIN))
        .then(|| head.uri.path_and_query().map_or("/", |p| p.as_str()))
    }

    /// The kept response for `key`, while it is fresh.
    pub fn answer(&self, key: &str) -> Option<Response> {
        let now = Instant::now();
        let entries = locks::read(&self.entries);
        let entry = entries.get(key).filter(|e| now < e.until)?;
        let mut response = Response::new(Body::from(entry.body.clone()));
        *response.headers_mut() = entry.headers.clone();
        let age = now.duration_since(entry.stored).as_secs();
        response
            .headers_mut()
            .insert(header::AGE, HeaderValue::from(age));
        Some(response)
    }

    /// `response`, kept under `key` when it may be: read whole first, and
    /// given on as read.
    pub async fn keep(&self, key: Box<str>, response: Response) -> Response {
        let Some(keep) = keep_for(&response) else {
            return response;
        };
        let (parts, body) = response.into_parts();
        let Ok(body) = axum::body::to_bytes(body, LARGEST).await else {
            return Fault::BadUpstream.into_response();
        };
        let now = Instant::now();
        {
            let mut entries = locks::write(&self.entries);
            if entries.len() >= ENTRIES {
                entries.retain(|_, e| now < e.until);
            }
            if entries.len() < ENTRIES || entries.contains_key(&key) {
                entries.insert(
                    key,
                    Entry {
                        headers: parts.headers.clone(),
                        body: body.clone(),
                        stored: now,
                        until: now + keep,
                    },
                );
            }
        }
        Response::from_parts(parts, Body::from(body))
    }
}

/// How long `response` may be kept: `None` unless it is a 200 that says
/// `public` with a `max-age`, sets no cookie, varies only with the origin
/// (which no kept request carries) and declares a small enough length.
fn keep_for(response: &Response) -> Option<Duration> {
    if response.status() != StatusCode::OK {
        return None;
    }
    let headers = response.headers();
    if headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    let length: usize = headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    if length > LARGEST {
        return None;
    }
    let varies_by_more = headers
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("*").split(','))
        .map(str::trim)
        .any(|name| {
            !name.eq_ignore_ascii_case("origin")
                && !name.eq_ignore_ascii_case("access-control-request-method")
                && !name.eq_ignore_ascii_case("access-control-request-headers")
        });
    if varies_by_more {
        return None;
    }
    let mut public = false;
    let mut max_age = None;
    for directive in headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("no-store").split(','))
    {
        let directive = directive.trim().to_ascii_lowercase();
        match directive.split_once('=') {
            None if directive == "public" => public = true,
            None if matches!(directive.as_str(), "private" | "no-store" | "no-cache") => {
                return None;
            }
            Some(("max-age", secs)) => max_age = secs.trim_matches('"').parse::<u64>().ok(),
            Some(("s-maxage", _)) => return None,
            _ => {}
        }
    }
    let max_age = Duration::from_secs(max_age?);
    (public && !max_age.is_zero()).then(|| max_age.min(KEEP_AT_MOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(fields: &[(&str, &str)]) -> Response {
        let mut r = Response::new(Body::from("{}"));
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        for (name, value) in fields {
            r.headers_mut().append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        r
    }

    #[test]
    fn only_public_responses_with_a_max_age_and_no_cookie_are_kept_and_briefly() {
        let public = [("cache-control", "public, max-age=299")];
        assert_eq!(keep_for(&response(&public)), Some(KEEP_AT_MOST));
        assert_eq!(
            keep_for(&response(&[("cache-control", "max-age=0, public")])),
            None
        );
        for refused in [
            vec![("cache-control", "max-age=60")],
            vec![("cache-control", "public, max-age=60, private")],
            vec![("cache-control", "public, no-store")],
            vec![("cache-control", "public")],
            vec![
                ("cache-control", "public, max-age=60"),
                ("set-cookie", "a=b"),
            ],
            vec![
                ("cache-control", "public, max-age=60"),
                ("vary", "authorization"),
            ],
            vec![],
        ] {
            assert_eq!(keep_for(&response(&refused)), None, "{refused:?}");
        }
        let varies_by_origin = [
            ("cache-control", "public, max-age=60"),
            ("vary", "origin, access-control-request-method"),
        ];
        assert!(keep_for(&response(&varies_by_origin)).is_some());
        let mut error = response(&public);
        *error.status_mut() = StatusCode::NOT_FOUND;
        assert_eq!(keep_for(&error), None);
        let mut unsized_body = response(&public);
        unsized_body.headers_mut().remove(header::CONTENT_LENGTH);
        assert_eq!(keep_for(&unsized_body), None);
    }

    #[test]
    fn requests_with_credentials_cookies_or_an_origin_are_never_answered_from_here() {
        let head = |method: Method, field: Option<(header::HeaderName, &str)>| {
            let mut builder = http::Request::builder()
                .method(method)
                .uri("/oauth2/jwks?x=1");
            if let Some((name, value)) = field {
                builder = builder.header(name, value);
            }
            builder.body(()).unwrap().into_parts().0
        };
        assert_eq!(
            Kept::key(&head(Method::GET, None)),
            Some("/oauth2/jwks?x=1")
        );
        assert_eq!(Kept::key(&head(Method::POST, None)), None);
        for field in [header::AUTHORIZATION, header::COOKIE, header::ORIGIN] {
            assert_eq!(Kept::key(&head(Method::GET, Some((field, "x")))), None);
        }
    }
}
