//! What a client registration may say: a spec from the admin API or the
//! CLI, checked field by field into the settled registration, with the
//! defaults of the client's kind.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::clients::{Grant, SCOPES};
use super::config::is_loopback;
use super::jws::Alg;

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

#[cfg(test)]
mod tests {
    use super::*;

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
