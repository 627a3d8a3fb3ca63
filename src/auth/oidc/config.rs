//! The `[auth.oidc]` config section: the provider's issuer and the
//! lifetimes of what it hands out.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The issuer URL applications are given; empty: `server.public_url`.
    /// Its endpoints are `<issuer>/oauth2/...`.
    pub issuer: String,
    /// How long an authorization code may wait for its exchange (at most 60).
    pub code_ttl_secs: u64,
    /// How long a browser stays signed in to the hosted pages, so that a
    /// second application signs its user in without asking again.
    pub browser_session_ttl_secs: u64,
    /// How long a person may take over the sign-in and consent pages.
    pub page_ttl_secs: u64,
    /// Whether first-party clients get a refresh token without asking for
    /// `offline_access` (others get one only with that scope).
    pub first_party_refresh: bool,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            code_ttl_secs: 60,
            browser_session_ttl_secs: 12 * 3600,
            page_ttl_secs: 600,
            first_party_refresh: true,
        }
    }
}

/// Why an issuer cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error(
        "the issuer {0:?} is not an http or https URL with a host and no path, query or fragment"
    )]
    Malformed(String),
    #[error(
        "the issuer {0:?} is plain http on a host other than loopback: browsers would send \
         sign-in cookies and codes in the clear (serve it over https, see [gateway.tls])"
    )]
    PlainBeyondLoopback(String),
}

/// `configured`, or `public_url` when it is empty, checked: an absolute
/// http(s) URL with nothing after the authority, and plain http only on a
/// loopback host. Answered without a trailing slash, as relying parties
/// compare issuers as strings.
pub fn issuer(configured: &str, public_url: &str) -> Result<String, IssuerError> {
    let raw = if configured.is_empty() {
        public_url
    } else {
        configured
    };
    let issuer = raw.trim_end_matches('/');
    let malformed = || IssuerError::Malformed(raw.to_owned());
    let uri: http::Uri = issuer.parse().map_err(|_| malformed())?;
    let host = uri.host().ok_or_else(malformed)?;
    let scheme = uri.scheme_str().ok_or_else(malformed)?;
    if !matches!(scheme, "http" | "https")
        || uri.path_and_query().is_some_and(|p| p.as_str() != "/")
        || issuer.contains(['#', '?', '@'])
    {
        return Err(malformed());
    }
    if scheme == "http" && !is_loopback(host) {
        return Err(IssuerError::PlainBeyondLoopback(raw.to_owned()));
    }
    Ok(issuer.to_owned())
}

/// Whether `host` (as a URI spells it) names this machine.
pub fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issuer_is_the_public_url_unless_set_and_plain_http_stays_on_loopback() {
        assert_eq!(
            issuer("", "http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            issuer("https://id.example.com", "http://127.0.0.1:8080").unwrap(),
            "https://id.example.com"
        );
        assert_eq!(
            issuer("http://localhost:8080", "").unwrap(),
            "http://localhost:8080"
        );
        assert_eq!(issuer("http://[::1]:80", "").unwrap(), "http://[::1]:80");
        assert!(matches!(
            issuer("http://id.example.com", ""),
            Err(IssuerError::PlainBeyondLoopback(_))
        ));
        for bad in [
            "id.example.com",
            "ftp://id.example.com",
            "https://id.example.com/tenant",
            "https://id.example.com?x=1",
            "https://user@id.example.com",
            "",
        ] {
            assert!(
                matches!(issuer(bad, ""), Err(IssuerError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
