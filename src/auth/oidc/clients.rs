//! The provider's clients: what a registration may say, how its secret is
//! made and checked, and how a redirect URI is matched.
//!
//! Ids and secrets are random, spelt with URL-unreserved characters only
//! (base64url), so that `client_secret_basic`'s form-encoding changes
//! nothing. A secret is 256 random bits: a SHA-256 of it is stored, which
//! is as hard to reverse as the secret is to guess, and costs a client's
//! authentication no slow hash.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::is_loopback;
use super::jws::Alg;

/// A grant a client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
}

impl Grant {
    pub const ALL: [Grant; 3] = [
        Grant::AuthorizationCode,
        Grant::RefreshToken,
        Grant::ClientCredentials,
    ];

    /// The `grant_type` value of the token endpoint.
    pub fn name(self) -> &'static str {
        match self {
            Grant::AuthorizationCode => "authorization_code",
            Grant::RefreshToken => "refresh_token",
            Grant::ClientCredentials => "client_credentials",
        }
    }

    pub fn parse(name: &str) -> Option<Grant> {
        Grant::ALL.into_iter().find(|g| g.name() == name)
    }
}

/// The scopes the provider knows.
pub const SCOPES: [&str; 5] = ["openid", "profile", "email", "offline_access", "roles"];

/// A registered client.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub name: String,
    /// SHA-256 of the secret, hex; `None` for a public client.
    pub secret_hash: Option<String>,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    /// Origins whose scripts may call the token, userinfo and discovery
    /// endpoints (CORS).
    pub web_origins: Vec<String>,
    pub grants: BTreeSet<Grant>,
    pub scopes: BTreeSet<String>,
    pub id_token_alg: Alg,
    /// A client of the platform's own operator: no consent is asked.
    pub first_party: bool,
    /// Whether an authorization request must carry a PKCE challenge.
    pub require_pkce: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Client {
    /// Whether the client holds no secret (a browser or native app).
    pub fn is_public(&self) -> bool {
        self.secret_hash.is_none()
    }

    /// Whether `secret` is this client's; false for a public client.
    pub fn secret_matches(&self, secret: &str) -> bool {
        self.secret_hash.as_ref().is_some_and(|stored| {
            let given = secret_hash(secret);
            // Equal length hex digests: compare every byte.
            stored
                .bytes()
                .zip(given.bytes())
                .fold(stored.len() ^ given.len(), |acc, (a, b)| {
                    acc | usize::from(a ^ b)
                })
                == 0
        })
    }

    /// The registered URI `requested` matches: the same string, or for a
    /// registered loopback `http` URI, the same but for the port (RFC 8252
    /// §7.3: a native app listens on whatever port it gets).
    pub fn redirect_uri(&self, requested: &str) -> Option<&str> {
        self.redirect_uris
            .iter()
            .find(|registered| {
                *registered == requested || same_but_loopback_port(registered, requested)
            })
            .map(String::as_str)
    }

    /// Whether `uri` is registered as a place to return to after sign-out
    /// (exactly; no port leeway).
    pub fn post_logout_redirect_uri(&self, uri: &str) -> bool {
        self.post_logout_redirect_uris.iter().any(|r| r == uri)
    }
}

/// Whether `a` and `b` are the same loopback `http` URI but for the port.
fn same_but_loopback_port(a: &str, b: &str) -> bool {
    let (Ok(a), Ok(b)) = (a.parse::<http::Uri>(), b.parse::<http::Uri>()) else {
        return false;
    };
    a.scheme_str() == Some("http")
        && b.scheme_str() == Some("http")
        && a.host().is_some_and(is_loopback)
        && a.host() == b.host()
        && a.path_and_query() == b.path_and_query()
        && !b.to_string().contains('@')
}

/// A client as an admin or the CLI describes it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClientSpec {
    pub name: String,
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    #[serde(default)]
    pub web_origins: Vec<String>,
    /// Default: every grant a client of its kind may use.
    #[serde(default)]
    pub grant_types: Option<Vec<String>>,
    /// Default: every scope the provider knows.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Default: `RS256`.
    #[serde(default)]
    pub id_token_signed_response_alg: Option<String>,
    #[serde(default)]
    pub first_party: bool,
    /// A browser or native app, which holds no secret.
    #[serde(default)]
    pub public: bool,
    /// Default: true. A public client always needs PKCE; a confidential
    /// one that cannot send a challenge may be let off.
    #[serde(default)]
    pub require_pkce: Option<bool>,
}

/// Why a client cannot be registered as described.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

fn refuse(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError {
        field,
        message: message.into(),
    }
}

/// What a valid spec settles; the rest of a [`Client`] is the store's.
#[derive(Debug, Clone)]
pub struct Settled {
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub web_origins: Vec<String>,
    pub grants: BTreeSet<Grant>,
    pub scopes: BTreeSet<String>,
    pub id_token_alg: Alg,
    pub first_party: bool,
    pub public: bool,
    pub require_pkce: bool,
}

impl ClientSpec {
    /// Checks every field, answering the settled registration or the first
    /// field that is wrong.
    pub fn settle(self) -> Result<Settled, SpecError> {
        let name = self.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(refuse("name", "must be 1 to 100 printable characters"));
        }
        let grants: BTreeSet<Grant> = match self.grant_types {
            None if self.public => [Grant::AuthorizationCode, Grant::RefreshToken].into(),
            None => Grant::ALL.into(),
            Some(names) => names
                .iter()
                .map(|n| {
                    Grant::parse(n).ok_or_else(|| {
                        refuse(
                            "grant_types",
                            format!(
                                "{n:?} is not a grant the provider offers (authorization_code, \
                                 refresh_token, client_credentials; implicit and password are refused)"
                            ),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        if grants.is_empty() {
            return Err(refuse("grant_types", "must name at least one grant"));
        }
        if self.public && grants.contains(&Grant::ClientCredentials) {
            return Err(refuse(
                "grant_types",
                "a public client holds no secret, so it cannot use client_credentials",
            ));
        }
        let redirect_uris = dedup(self.redirect_uris);
        if grants.contains(&Grant::AuthorizationCode) && redirect_uris.is_empty() {
            return Err(refuse(
                "redirect_uris",
                "a client of the authorization code grant needs at least one",
            ));
        }
        for uri in &redirect_uris {
            check_redirect_uri(uri)
                .map_err(|m| refuse("redirect_uris", format!("{uri:?}: {m}")))?;
        }
        let post_logout_redirect_uris = dedup(self.post_logout_redirect_uris);
        for uri in &post_logout_redirect_uris {
            check_redirect_uri(uri)
                .map_err(|m| refuse("post_logout_redirect_uris", format!("{uri:?}: {m}")))?;
        }
        let web_origins = dedup(self.web_origins);
        for origin in &web_origins {
            check_origin(origin).map_err(|m| refuse("web_origins", format!("{origin:?}: {m}")))?;
        }
        let scopes: BTreeSet<String> = match self.scopes {
            None => SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            Some(scopes) => scopes.into_iter().collect(),
        };
        if let Some(unknown) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
            return Err(refuse(
                "scopes",
                format!(
                    "{unknown:?} is not a scope the provider knows ({})",
                    SCOPES.join(", ")
                ),
            ));
        }
        let id_token_alg = match self.id_token_signed_response_alg {
            None => Alg::Rs256,
            Some(name) => Alg::parse(&name).ok_or_else(|| {
                refuse(
                    "id_token_signed_response_alg",
                    format!("{name:?} is not RS256, ES256 or EdDSA"),
                )
            })?,
        };
        Ok(Settled {
            name,
            redirect_uris,
            post_logout_redirect_uris,
            web_origins,
            grants,
            scopes,
            id_token_alg,
            first_party: self.first_party,
            public: self.public,
            require_pkce: self.public || self.require_pkce.unwrap_or(true),
        })
    }
}

fn dedup(list: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    list.into_iter()
        .filter(|item| seen.insert(item.clone()))
        .collect()
}

/// A redirect URI may be `https`, `http` on a loopback host, or a native
/// app's private-use scheme (reverse domain, RFC 8252 §7.1); absolute, with
/// no fragment and no user info.
fn check_redirect_uri(uri: &str) -> Result<(), &'static str> {
    if uri.len() > 2000
        || uri.contains('#')
        || uri.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("must be an absolute URI of at most 2000 characters without a fragment");
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err("must be an absolute URI");
    };
    let scheme = scheme.to_ascii_lowercase();
    match scheme.as_str() {
        "https" | "http" => {
            let parsed: http::Uri = uri.parse().map_err(|_| "is not a valid URI")?;
            let host = parsed.host().ok_or("has no host")?;
            if parsed.authority().is_some_and(|a| a.as_str().contains('@')) {
                return Err("must not carry user info");
            }
            if scheme == "http" && !is_loopback(host) {
                return Err(
                    "plain http is allowed only on a loopback host (127.0.0.1, [::1], localhost)",
                );
            }
            Ok(())
        }
        "javascript" | "data" | "file" | "vbscript" => {
            Err("is not a scheme a browser may be sent to")
        }
        _ if scheme.contains('.')
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'))
            && !rest.is_empty() =>
        {
            Ok(())
        }
        _ => Err(
            "must be https, http on loopback, or a private-use scheme such as com.example.app:/callback",
        ),
    }
}

/// An origin is `scheme://host[:port]`, nothing more.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    let parsed: http::Uri = origin.parse().map_err(|_| "is not an origin")?;
    if !matches!(parsed.scheme_str(), Some("https" | "http"))
        || parsed.host().is_none()
        || origin.ends_with('/')
        || parsed
            .path_and_query()
            .is_some_and(|p| !p.as_str().is_empty() && p.as_str() != "/")
        || origin.contains('@')
    {
        return Err("must be scheme://host[:port], such as https://app.example.com");
    }
    Ok(())
}

/// A new client id: 128 random bits.
pub fn new_client_id() -> String {
    random_token(16)
}

/// A new client secret (256 random bits) and the hash that is stored.
pub fn new_secret() -> (String, String) {
    let secret = random_token(32);
    let hash = secret_hash(&secret);
    (secret, hash)
}

/// `bytes` random bytes in base64url, unpadded.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// What is stored for `secret`.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(uris: &[&str]) -> Client {
        let now = Utc::now();
        Client {
            id: new_client_id(),
            name: "app".into(),
            secret_hash: None,
            redirect_uris: uris.iter().map(|u| (*u).to_owned()).collect(),
            post_logout_redirect_uris: vec![],
            web_origins: vec![],
            grants: Grant::ALL.into(),
            scopes: BTreeSet::new(),
            id_token_alg: Alg::Rs256,
            first_party: false,
            require_pkce: true,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn redirect_uris_match_exactly_but_for_a_loopback_port() {
        let c = client(&[
            "https://app.example.com/cb",
            "http://127.0.0.1/cb",
            "http://[::1]:8000/cb",
        ]);
        assert!(c.redirect_uri("https://app.example.com/cb").is_some());
        for refused in [
            "https://app.example.com/cb/",
            "https://app.example.com/cb?x=1",
            "https://app.example.com:444/cb",
            "https://APP.example.com/cb",
            "http://app.example.com/cb",
            "https://app.example.com/cb#frag",
            "http://127.0.0.1/other",
            "http://localhost/cb",
            "http://127.0.0.1.evil.com/cb",
            "http://evil@127.0.0.1/cb",
        ] {
            assert_eq!(c.redirect_uri(refused), None, "{refused}");
        }
        assert_eq!(
            c.redirect_uri("http://127.0.0.1:53412/cb"),
            Some("http://127.0.0.1/cb")
        );
        assert_eq!(
            c.redirect_uri("http://[::1]:1/cb"),
            Some("http://[::1]:8000/cb")
        );
    }

    #[test]
    fn a_secret_matches_only_itself() {
        let (secret, hash) = new_secret();
        let mut c = client(&[]);
        assert!(!c.secret_matches(&secret), "a public client has no secret");
        c.secret_hash = Some(hash);
        assert!(c.secret_matches(&secret));
        assert!(!c.secret_matches(&new_secret().0));
        assert!(!c.secret_matches(""));
        assert_eq!(secret.len(), 43);
        assert!(
            secret
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        );
    }

    #[test]
    fn a_spec_is_settled_with_defaults_for_its_kind_or_refused_by_field() {
        let spec = |public| ClientSpec {
            name: " App ".into(),
            redirect_uris: vec!["https://app.example.com/cb".into()],
            public,
            ..Default::default()
        };
        let confidential = spec(false).settle().unwrap();
        assert_eq!(confidential.name, "App");
        assert_eq!(confidential.grants, Grant::ALL.into());
        assert_eq!(confidential.id_token_alg, Alg::Rs256);
        assert!(confidential.require_pkce);
        let public = spec(true).settle().unwrap();
        assert!(!public.grants.contains(&Grant::ClientCredentials));
        let let_off = |public| ClientSpec {
            require_pkce: Some(false),
            ..spec(public)
        };
        assert!(!let_off(false).settle().unwrap().require_pkce);
        assert!(
            let_off(true).settle().unwrap().require_pkce,
            "a public client always needs PKCE"
        );

        let field = |spec: ClientSpec| spec.settle().unwrap_err().field;
        assert_eq!(
            field(ClientSpec {
                name: "".into(),
                ..spec(false)
            }),
            "name"
        );
        for grant in ["implicit", "password"] {
            assert_eq!(
                field(ClientSpec {
                    grant_types: Some(vec![grant.into()]),
                    ..spec(false)
                }),
                "grant_types"
            );
        }
        assert_eq!(
            field(ClientSpec {
                grant_types: Some(vec!["client_credentials".into()]),
                ..spec(true)
            }),
            "grant_types"
        );
        for uri in [
            "http://app.example.com/cb",
            "/cb",
            "https://app.example.com/cb#x",
            "javascript:alert(1)",
            "https://user@app.example.com/cb",
            "myapp:/cb",
        ] {
            assert_eq!(
                field(ClientSpec {
                    redirect_uris: vec![uri.into()],
                    ..spec(false)
                }),
                "redirect_uris",
                "{uri}"
            );
        }
        for ok in [
            "http://127.0.0.1:9000/cb",
            "http://localhost/cb",
            "com.example.app:/oauth",
        ] {
            assert!(
                ClientSpec {
                    redirect_uris: vec![ok.into()],
                    ..spec(true)
                }
                .settle()
                .is_ok(),
                "{ok}"
            );
        }
        assert_eq!(
            field(ClientSpec {
                redirect_uris: vec![],
                ..spec(false)
            }),
            "redirect_uris"
        );
        assert_eq!(
            field(ClientSpec {
                scopes: Some(vec!["admin".into()]),
                ..spec(false)
            }),
            "scopes"
        );
        assert_eq!(
            field(ClientSpec {
                web_origins: vec!["https://app.example.com/path".into()],
                ..spec(false)
            }),
            "web_origins"
        );
        assert_eq!(
            field(ClientSpec {
                id_token_signed_response_alg: Some("HS256".into()),
                ..spec(false)
            }),
            "id_token_signed_response_alg"
        );
    }
}
