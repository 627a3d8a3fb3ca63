//! The route table and path normalisation. A path is normalised before it is
//! matched (percent-decoding, duplicate slashes, dot segments), and the
//! normalised path is what goes upstream, so `/v1/users/x/../me` meets the
//! policy of `/v1/users/me` and nothing else.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use smallvec::SmallVec;

use super::config::{AuthPolicy, RouteConfig};
use super::rules::{self, Cover, Rule};
use crate::kernel::config::ConfigError;
use crate::kernel::telemetry;

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

/// A request path in canonical form: decoded segments without empty, `.`
/// or `..` segments (borrowed from the raw path where nothing was decoded).
/// Derefs to the segments.
#[derive(Debug)]
pub struct Normalised<'a> {
    segments: SmallVec<[Cow<'a, str>; 8]>,
    /// The raw path, when it is already what [`join`] makes of the segments:
    /// then it can go upstream as it is, with nothing encoded again.
    as_is: Option<&'a str>,
}

impl<'a> std::ops::Deref for Normalised<'a> {
    type Target = [Cow<'a, str>];

    fn deref(&self) -> &Self::Target {
        &self.segments
    }
}

/// What a byte of a path segment asks of [`normalise`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ByteClass {
    /// Taken as it is, and forwarded as it is.
    Plain,
    /// Taken as it is, but encoded again when forwarded (see [`SEGMENT`]).
    Encoded,
    /// Not plain: the segment is decoded (or refused).
    Decode,
}

/// Each byte's class, worked out once from the rules above.
static CLASSES: std::sync::LazyLock<[ByteClass; 256]> = std::sync::LazyLock::new(|| {
    std::array::from_fn(|b| {
        let b = u8::try_from(b).unwrap_or(0);
        if !b.is_ascii_graphic() || b == b'%' || b == b'\\' {
            ByteClass::Decode
        } else if utf8_percent_encode(char::from(b).encode_utf8(&mut [0; 4]), SEGMENT)
            .next()
            .is_some_and(|chunk| chunk.len() == 1)
        {
            ByteClass::Plain
        } else {
            ByteClass::Encoded
        }
    })
});

/// Normalises `raw`, a request path, in one pass over its bytes.
pub fn normalise(raw: &str) -> Result<Normalised<'_>, PathError> {
    let classes = &*CLASSES;
    let mut segments: SmallVec<[Cow<'_, str>; 8]> = SmallVec::new();
    // The normal form starts with its separator; the part before it is empty.
    let mut as_is = raw.starts_with('/');
    let mut start = 0;
    let mut class = ByteClass::Plain;
    for (i, &b) in raw
        .as_bytes()
        .iter()
        .chain(std::iter::once(&b'/'))
        .enumerate()
    {
        if b != b'/' {
            class = class.max(classes[usize::from(b)]);
            continue;
        }
        let part = raw.get(start..i).ok_or(PathError::Invalid)?;
        let segment = match class {
            ByteClass::Plain => Cow::Borrowed(part),
            ByteClass::Encoded => {
                as_is = false;
                Cow::Borrowed(part)
            }
            ByteClass::Decode => {
                as_is = false;
                decode(part)?
            }
        };
        match segment.as_ref() {
            // The empty part before the first separator is no segment.
            "" if start == 0 => {}
            "" | "." => as_is = false,
            ".." => {
                as_is = false;
                segments.pop().ok_or(PathError::Invalid)?;
            }
            // A dot segment with path parameters (`..;x`, `.;`): servers
            // that strip parameters before resolving dot segments (Tomcat
            // and its kin) would climb where this route table did not.
            dotted if dotted.starts_with('.') && is_dot_segment(dotted) => {
                return Err(PathError::Invalid);
            }
            _ => segments.push(segment),
        }
        start = i + 1;
        class = ByteClass::Plain;
    }
    // The root is its own normal form, though its one part after the separator is empty.
    let as_is = (as_is || raw == "/").then_some(raw);
    Ok(Normalised { segments, as_is })
}

/// Whether `segment` is `.` or `..` followed by path parameters.
fn is_dot_segment(segment: &str) -> bool {
    matches!(segment.split(';').next(), Some("." | ".."))
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
    /// The prefix, for logs and metrics (see [`telemetry::intern`]).
    pub label: &'static str,
    segments: Vec<String>,
    /// The route's rules, compiled (see [`super::rules`]).
    rules: Vec<Rule>,
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
        // The OpenID Connect provider: its clients authenticate to it
        // themselves (Basic, PKCE), and its userinfo checks its bearer token.
        // Discovery and the JWKS, fetched often, say `public, max-age`:
        // the gateway keeps them a moment.
        RouteConfig {
            keep_public: true,
            ..route("/oauth2", "auth", AuthPolicy::Public)
        },
        RouteConfig {
            keep_public: true,
            ..route(
                "/.well-known/openid-configuration",
                "auth",
                AuthPolicy::Public,
            )
        },
        route("/v1/oidc", "auth", AuthPolicy::Required),
        route("/v1/users", "identity", AuthPolicy::Public),
        route("/v1/users/me", "identity", AuthPolicy::Required),
        route("/v1/password-resets", "identity", AuthPolicy::Public),
        route("/v1/email-verifications", "identity", AuthPolicy::Public),
        route("/v1/authz", "authz", AuthPolicy::Required),
        route("/v1/audit", "audit", AuthPolicy::Required),
    ]
}

impl RouteTable {
    /// The built-in routes plus `extra` (an extra route with the same prefix
    /// as a built-in one replaces it). Bad prefixes are a config error.
    pub fn new(extra: &[RouteConfig]) -> Result<Self, ConfigError> {
        let mut routes: Vec<Route> = Vec::new();
        for config in built_in().into_iter().chain(extra.iter().cloned()) {
            let segments: Vec<String> = normalise(&config.prefix)
                .map_err(|_| {
                    ConfigError(format!("gateway.routes: bad prefix {:?}", config.prefix))
                })?
                .iter()
                .map(|s| s.clone().into_owned())
                .collect();
            let canonical = join(&segments, None);
            if canonical != config.prefix.trim_end_matches('/')
                && !(canonical == "/" && config.prefix == "/")
            {
                return Err(ConfigError(format!(
                    "gateway.routes: prefix {:?} is not in normal form (write {canonical:?})",
                    config.prefix
                )));
            }
            // The gateway answers these itself; a route there would never be reached.
            if matches!(
                segments.first().map(String::as_str),
                Some("docs" | "openapi.json")
            ) {
                return Err(ConfigError(format!(
                    "gateway.routes: prefix {:?} is served by the gateway itself (/docs, /openapi.json)",
                    config.prefix
                )));
            }
            let rules = check_rules(&config, &segments)?;
            let mut config = config;
            for method in &mut config.methods {
                // A standard method listed in another case means the
                // standard one: methods are matched as they are spelt.
                let upper = method.to_ascii_uppercase();
                if crate::kernel::http::wire::method_fault(
                    &http::Method::from_bytes(method.as_bytes()).map_err(|_| {
                        ConfigError(format!("gateway.routes: bad method {method:?}"))
                    })?,
                )
                .is_some()
                {
                    *method = upper;
                }
                if *method == "CONNECT" || *method == "TRACE" {
                    return Err(ConfigError(format!(
                        "gateway.routes: {method} is never forwarded (route {:?})",
                        config.prefix
                    )));
                }
            }
            routes.retain(|r| r.segments != segments);
            routes.push(Route {
                label: telemetry::intern(&config.prefix),
                config,
                segments,
                rules,
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.segments.len()));
        Ok(Self { routes })
    }

    /// Every route, longest prefix first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The place of the route with the longest prefix that contains the
    /// path (see [`RouteTable::route`]).
    pub fn find(&self, segments: &[Cow<'_, str>]) -> Option<usize> {
        self.routes.iter().position(|r| {
            segments.len() >= r.segments.len()
                && r.segments.iter().zip(segments).all(|(a, b)| a == b)
        })
    }

    /// The route at `index`, a place [`RouteTable::find`] gave.
    pub fn route(&self, index: usize) -> &Route {
        &self.routes[index]
    }
}

/// A route's rules, compiled; a route with rules must require a token. The
/// settings rules replaced are refused, naming them.
fn check_rules(config: &RouteConfig, segments: &[String]) -> Result<Vec<Rule>, ConfigError> {
    let prefix = &config.prefix;
    for (removed, given) in [
        ("permission", config.permission.is_some()),
        ("resource_segment", config.resource_segment.is_some()),
    ] {
        if given {
            return Err(ConfigError(format!(
                "gateway.routes: route {prefix:?}: `{removed}` is replaced by [[gateway.routes.rules]], \
                 path templates with a permission per method and a resource from a path variable \
                 (see docs/gateway.md, \"Permissions on routes\")"
            )));
        }
    }
    if config.rules.is_empty() {
        return Ok(Vec::new());
    }
    if config.auth != AuthPolicy::Required {
        return Err(ConfigError(format!(
            "gateway.routes: route {prefix:?} has rules, so its auth must be \"required\""
        )));
    }
    rules::compile(segments, &config.rules)
        .map_err(|e| ConfigError(format!("gateway.routes: route {prefix:?}: {e}")))
}

impl Route {
    /// What the route's rules make of `method` on `path`; `None` when the
    /// route has no rules (nothing is asked of authz).
    pub fn cover(&self, method: &str, path: &Normalised<'_>) -> Option<Cover> {
        (!self.rules.is_empty()).then(|| rules::cover(&self.rules, method, path))
    }

    /// The path (and `query`) to send upstream for a request to `path`.
    pub fn upstream_target(&self, path: &Normalised<'_>, query: Option<&str>) -> String {
        let skipped = if self.config.strip_prefix {
            self.segments.len()
        } else {
            0
        };
        match path.as_is {
            // In normal form already: the rest after the skipped segments,
            // each of which is one separator and its text.
            Some(raw) => {
                let taken: usize = path.iter().take(skipped).map(|s| s.len() + 1).sum();
                let rest = raw.get(taken..).filter(|r| !r.is_empty()).unwrap_or("/");
                let mut target =
                    String::with_capacity(rest.len() + query.map_or(0, |q| q.len() + 1));
                target.push_str(rest);
                if let Some(query) = query {
                    target.push('?');
                    target.push_str(query);
                }
                target
            }
            None => join(path.get(skipped..).unwrap_or_default(), query),
        }
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
        assert_eq!(path("/a/.well-known/x;y").unwrap(), "/a/.well-known/x;y");
        for bad in [
            "/..",
            "/v1/../..",
            "/v1/users%2fme",
            "/v1/%5cx",
            "/v1/%00",
            "/v1/%ff",
            "/v1/users/..;/admin",
            "/v1/users/..;x=1/admin",
            "/v1/users/%2e%2e;/admin",
            "/v1/users/.;/me",
        ] {
            assert_eq!(path(bad), Err(PathError::Invalid), "{bad}");
        }
    }

    #[test]
    fn a_path_in_normal_form_goes_upstream_as_it_is_and_any_other_as_rebuilt() {
        let route = |strip_prefix| Route {
            label: "/a",
            config: RouteConfig {
                strip_prefix,
                ..RouteConfig::new("/a", "a", AuthPolicy::Public)
            },
            segments: vec!["a".into()],
            rules: Vec::new(),
        };
        let cases = [
            ("/a/b/c", Some("x=1"), "/a/b/c?x=1", "/b/c?x=1", true),
            ("/a", None, "/a", "/", true),
            ("/", None, "/", "/", true),
            ("/a/b%2Dc", None, "/a/b-c", "/b-c", false),
            ("/a//b/./c/", None, "/a/b/c", "/b/c", false),
            ("/a/x/../b", None, "/a/b", "/b", false),
            ("/a/{b}", None, "/a/%7Bb%7D", "/%7Bb%7D", false),
            ("/a/caf%C3%A9", None, "/a/caf%C3%A9", "/caf%C3%A9", false),
        ];
        for (raw, query, kept, stripped, as_is) in cases {
            let path = normalise(raw).unwrap();
            assert_eq!(path.as_is.is_some(), as_is, "{raw}");
            assert_eq!(route(false).upstream_target(&path, query), kept, "{raw}");
            assert_eq!(route(true).upstream_target(&path, query), stripped, "{raw}");
        }
    }

    #[test]
    fn the_longest_prefix_wins_and_prefixes_match_whole_segments() {
        let table = RouteTable::new(&[]).unwrap();
        let find = |raw: &str| {
            let segments = normalise(raw).unwrap();
            table
                .find(&segments)
                .map(|i| table.route(i))
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
        let route = table.route(table.find(&segments).unwrap());
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
