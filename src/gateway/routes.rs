//! The route table and path normalisation. A path is normalised before it is
//! matched (percent-decoding, duplicate slashes, dot segments), and the
//! normalised path is what goes upstream, so `/v1/users/x/../me` meets the
//! policy of `/v1/users/me` and nothing else.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use super::config::{AuthPolicy, RouteConfig};

/// Characters that stay encoded in a forwarded path segment.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\');

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// Encoded separators, invalid encoding, control characters, or `..`
    /// climbing above the root.
    Invalid,
}

/// The canonical form of a request path: decoded segments without empty,
/// `.` or `..` segments (borrowed from `raw` where nothing was decoded).
pub fn normalise(raw: &str) -> Result<Vec<Cow<'_, str>>, PathError> {
    let mut segments: Vec<Cow<'_, str>> = Vec::with_capacity(8);
    for part in raw.split('/') {
        // Most segments are plain visible ASCII with nothing to decode.
        let plain = part
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'%' && b != b'\\');
        let segment = if plain {
            Cow::Borrowed(part)
        } else {
            decode(part)?
        };
        match segment.as_ref() {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(PathError::Invalid)?;
            }
            _ => segments.push(segment),
        }
    }
    Ok(segments)
}

/// One segment percent-decoded, refused when it decodes to a separator, a
/// control character or invalid UTF-8.
fn decode(part: &str) -> Result<Cow<'_, str>, PathError> {
    let decoded = percent_decode_str(part)
        .decode_utf8()
        .map_err(|_| PathError::Invalid)?;
    if decoded.contains(['/', '\\']) || decoded.chars().any(char::is_control) {
        return Err(PathError::Invalid);
    }
    Ok(decoded)
}

/// The path of `segments`, each encoded again, followed by `?query` when
/// there is one.
pub fn join<S: AsRef<str>>(segments: &[S], query: Option<&str>) -> String {
    let mut path = String::with_capacity(64);
    for segment in segments {
        path.push('/');
        path.extend(utf8_percent_encode(segment.as_ref(), SEGMENT));
    }
    if path.is_empty() {
        path.push('/');
    }
    if let Some(query) = query {
        path.push('?');
        path.push_str(query);
    }
    path
}

/// A route ready for matching.
#[derive(Debug, Clone)]
pub struct Route {
    pub config: RouteConfig,
    /// The prefix, shared, for logs and metrics.
    pub label: std::sync::Arc<str>,
    segments: Vec<String>,
}

/// Routes, longest prefix first.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
}

/// The core services' public APIs.
pub fn built_in() -> Vec<RouteConfig> {
    let route = RouteConfig::new;
    vec![
        // Auth checks the bearer token of its own signed-in routes itself.
        route("/v1/auth", "auth", AuthPolicy::Public),
        route("/v1/users", "identity", AuthPolicy::Public),
        route("/v1/users/me", "identity", AuthPolicy::Required),
        route("/v1/password-resets", "identity", AuthPolicy::Public),
        route("/v1/email-verifications", "identity", AuthPolicy::Public),
    ]
}

impl RouteTable {
    /// The built-in routes plus `extra` (an extra route with the same prefix
    /// as a built-in one replaces it). Bad prefixes are a config error.
    pub fn new(extra: &[RouteConfig]) -> Result<Self, String> {
        let mut routes: Vec<Route> = Vec::new();
        for config in built_in().into_iter().chain(extra.iter().cloned()) {
            let segments: Vec<String> = normalise(&config.prefix)
                .map_err(|_| format!("gateway.routes: bad prefix {:?}", config.prefix))?
                .into_iter()
                .map(Cow::into_owned)
                .collect();
            let canonical = join(&segments, None);
            if canonical != config.prefix.trim_end_matches('/')
                && !(canonical == "/" && config.prefix == "/")
            {
                return Err(format!(
                    "gateway.routes: prefix {:?} is not in normal form (write {canonical:?})",
                    config.prefix
                ));
            }
            // The gateway answers these itself; a route there would never be reached.
            if matches!(
                segments.first().map(String::as_str),
                Some("docs" | "openapi.json")
            ) {
                return Err(format!(
                    "gateway.routes: prefix {:?} is served by the gateway itself (/docs, /openapi.json)",
                    config.prefix
                ));
            }
            routes.retain(|r| r.segments != segments);
            routes.push(Route {
                label: config.prefix.as_str().into(),
                config,
                segments,
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.segments.len()));
        Ok(Self { routes })
    }

    /// Every route, longest prefix first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route with the longest prefix that contains the path.
    pub fn find(&self, segments: &[Cow<'_, str>]) -> Option<&Route> {
        self.routes.iter().find(|r| {
            segments.len() >= r.segments.len()
                && r.segments.iter().zip(segments).all(|(a, b)| a == b)
        })
    }
}

impl Route {
    /// The path (and `query`) to send upstream for a request to `segments`.
    pub fn upstream_target(&self, segments: &[Cow<'_, str>], query: Option<&str>) -> String {
        let rest = if self.config.strip_prefix {
            &segments[self.segments.len()..]
        } else {
            segments
        };
        join(rest, query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_before_anything_else() {
        let path = |raw| normalise(raw).map(|segments| join(&segments, None));
        assert_eq!(path("/v1/users/me").unwrap(), "/v1/users/me");
        assert_eq!(path("//v1///users/./me/").unwrap(), "/v1/users/me");
        assert_eq!(path("/v1/users/x/../me").unwrap(), "/v1/users/me");
        assert_eq!(path("/v1/users/%2e%2e/users/me").unwrap(), "/v1/users/me");
        assert_eq!(path("/v1/%75sers/me").unwrap(), "/v1/users/me");
        assert_eq!(path("/a%20b").unwrap(), "/a%20b");
        assert_eq!(path("/").unwrap(), "/");
        for bad in [
            "/..",
            "/v1/../..",
            "/v1/users%2fme",
            "/v1/%5cx",
            "/v1/%00",
            "/v1/%ff",
        ] {
            assert_eq!(path(bad), Err(PathError::Invalid), "{bad}");
        }
    }

    #[test]
    fn the_longest_prefix_wins_and_prefixes_match_whole_segments() {
        let table = RouteTable::new(&[]).unwrap();
        let find = |raw: &str| {
            let segments = normalise(raw).unwrap();
            table
                .find(&segments)
                .map(|r| (r.config.service.clone(), r.config.auth))
        };
        assert_eq!(
            find("/v1/users/me"),
            Some(("identity".into(), AuthPolicy::Required))
        );
        assert_eq!(
            find("/v1/users/me/password"),
            Some(("identity".into(), AuthPolicy::Required))
        );
        assert_eq!(
            find("/v1/users"),
            Some(("identity".into(), AuthPolicy::Public))
        );
        assert_eq!(
            find("/v1/users/../users/me"),
            Some(("identity".into(), AuthPolicy::Required))
        );
        assert_eq!(find("/v1/usersx"), None);
        assert_eq!(
            find("/v1/auth/login"),
            Some(("auth".into(), AuthPolicy::Public))
        );
        assert_eq!(find("/elsewhere"), None);
    }

    #[test]
    fn prefixes_can_be_stripped_and_bad_prefixes_refused() {
        let extra = RouteConfig {
            strip_prefix: true,
            timeout_ms: Some(500),
            ..RouteConfig::new("/billing", "billing", AuthPolicy::Required)
        };
        let table = RouteTable::new(std::slice::from_ref(&extra)).unwrap();
        let segments = normalise("/billing/invoices/7").unwrap();
        let route = table.find(&segments).unwrap();
        assert_eq!(route.upstream_target(&segments, None), "/invoices/7");
        assert_eq!(
            route.upstream_target(&segments, Some("a=1&b")),
            "/invoices/7?a=1&b"
        );
        let bad = RouteConfig {
            prefix: "/a/../b".into(),
            ..extra.clone()
        };
        assert!(RouteTable::new(&[bad]).is_err());
        for taken in ["/docs", "/openapi.json", "/docs/x"] {
            let shadowed = RouteConfig {
                prefix: taken.into(),
                ..extra.clone()
            };
            assert!(RouteTable::new(&[shadowed]).is_err(), "{taken}");
        }
    }
}
