//! The provider's clients: what a registration may say, how its secret is
//! made and checked, and how a redirect URI is matched.
//!
//! Ids are random UUIDs (a client acting for itself is a subject of
//! tokens and of authz's bindings, as users are, by UUID); secrets are
//! random, spelt with URL-unreserved characters only (base64url). Neither
//! is changed by `client_secret_basic`'s form-encoding. A secret is 256 random bits: a SHA-256 of it is stored, which
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
pub use super::spec::{ClientSpec, Settled, SpecError};

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

/// The scopes the provider knows. Each speaks of a user, so a client's own
/// token (client credentials) is granted none of them.
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

/// A new client id: a random (v4) UUID, 122 random bits.
pub fn new_client_id() -> String {
    uuid::Uuid::new_v4().to_string()
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
}
