//! An authorization request, checked: first the client and its redirect
//! URI, whose faults are shown on the error page and never redirected
//! (else anyone could bounce a browser anywhere through the provider),
//! then the rest, whose faults go back to the client (RFC 6749 §4.1.2.1).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::clients::{Client, Grant};

/// An authorization request's parameters, as sent.
#[derive(Debug, Default, Deserialize)]
pub struct AuthorizeParams {
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub response_type: Option<String>,
    pub response_mode: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub prompt: Option<String>,
    pub max_age: Option<String>,
    pub login_hint: Option<String>,
    pub request: Option<String>,
    pub request_uri: Option<String>,
}

/// A checked authorization request: carried, sealed, by the hosted pages'
/// forms until it ends in a code or an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub client_id: String,
    /// The redirect URI as the request spelt it (a loopback port may
    /// differ from the registered one); the exchange must send it again.
    pub redirect_uri: String,
    pub scope: BTreeSet<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    /// `prompt=none`: answer at once, never show a page.
    pub no_prompt: bool,
    /// `prompt=consent`: ask again even if consent was given.
    pub ask_consent: bool,
    /// `prompt=login` or `max_age=0`: a sign-in made for this request.
    pub fresh_login: bool,
    /// From `max_age`: the sign-in must be no older than this (unix seconds).
    pub signed_in_since: Option<i64>,
    /// The browser session signed in for this request on the sign-in page,
    /// which is fresh enough whatever the above say.
    pub signed_in_as: Option<String>,
    pub login_hint: Option<String>,
    /// Unix seconds after which the pages refuse it.
    pub expires_at: i64,
    /// The CSRF token of the browser it was made for.
    pub csrf: String,
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Shown on the error page: the client or its redirect URI is wrong.
    Page(String),
    /// Sent to the redirect URI, with the request's state.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
        description: String,
    },
}

/// Longest `state`, `nonce` and `login_hint` accepted.
const MAX_VALUE: usize = 1024;

/// Checks `params` for `client` (`None`: no such client), at unix time
/// `now`. The answer still needs its `expires_at` and `csrf`.
pub fn check(
    params: AuthorizeParams,
    client: Option<&Client>,
    now: i64,
) -> Result<Pending, Refusal> {
    let Some(client_id) = params.client_id.as_deref().filter(|c| !c.is_empty()) else {
        return Err(Refusal::Page("The application sent no client_id.".into()));
    };
    let Some(client) = client.filter(|c| c.id == client_id) else {
        return Err(Refusal::Page(
            "The application is not registered with this provider (unknown client_id).".into(),
        ));
    };
    let Some(requested) = params.redirect_uri.clone() else {
        return Err(Refusal::Page(
            "The application sent no redirect_uri.".into(),
        ));
    };
    if client.redirect_uri(&requested).is_none() {
        return Err(Refusal::Page(
            "The application asked to be sent back to an address it did not register (redirect_uri)."
                .into(),
        ));
    }
    let state = params.state.clone();
    let refuse = |error: &'static str, description: &str| Refusal::Redirect {
        redirect_uri: requested.clone(),
        state: state.clone(),
        error,
        description: description.to_owned(),
    };
    if state.as_ref().is_some_and(|s| s.len() > MAX_VALUE) {
        return Err(refuse("invalid_request", "state is too long"));
    }
    if params.request.is_some() {
        return Err(refuse(
            "request_not_supported",
            "request objects are not supported",
        ));
    }
    if params.request_uri.is_some() {
        return Err(refuse(
            "request_uri_not_supported",
            "request_uri is not supported",
        ));
    }
    match params.response_type.as_deref() {
        Some("code") => {}
        None => return Err(refuse("invalid_request", "response_type is missing")),
        Some(_) => {
            return Err(refuse(
                "unsupported_response_type",
                "only response_type=code is supported (the implicit and hybrid flows are not)",
            ));
        }
    }
    if params
        .response_mode
        .as_deref()
        .is_some_and(|m| m != "query")
    {
        return Err(refuse(
            "invalid_request",
            "only response_mode=query is supported",
        ));
    }
    if !client.grants.contains(&Grant::AuthorizationCode) {
        return Err(refuse(
            "unauthorized_client",
            "the client may not use the authorization code grant",
        ));
    }
    let scope: BTreeSet<String> = params
        .scope
        .as_deref()
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if !scope.contains("openid") {
        return Err(refuse("invalid_scope", "the openid scope is required"));
    }
    if let Some(other) = scope.iter().find(|s| !client.scopes.contains(*s)) {
        return Err(refuse(
            "invalid_scope",
            &format!("the client may not ask for the scope {other}"),
        ));
    }
    let code_challenge = match (
        params.code_challenge,
        params.code_challenge_method.as_deref(),
    ) {
        (None, None) if client.require_pkce => {
            return Err(refuse(
                "invalid_request",
                "a PKCE code_challenge with code_challenge_method=S256 is required",
            ));
        }
        (None, None) => None,
        (Some(challenge), Some("S256")) if is_challenge(&challenge) => Some(challenge),
        (Some(_), Some("S256")) => {
            return Err(refuse(
                "invalid_request",
                "code_challenge must be 43 base64url characters (the SHA-256 of the verifier)",
            ));
        }
        (Some(_), None | Some("plain")) => {
            return Err(refuse(
                "invalid_request",
                "code_challenge_method must be S256 (plain is not accepted)",
            ));
        }
        _ => {
            return Err(refuse(
                "invalid_request",
                "code_challenge_method must be S256 with a code_challenge",
            ));
        }
    };
    let prompts: BTreeSet<&str> = params
        .prompt
        .as_deref()
        .unwrap_or_default()
        .split(' ')
        .filter(|p| !p.is_empty())
        .collect();
    if let Some(other) = prompts
        .iter()
        .find(|p| !matches!(**p, "none" | "login" | "consent" | "select_account"))
    {
        return Err(refuse(
            "invalid_request",
            &format!("prompt={other} is not supported"),
        ));
    }
    let no_prompt = prompts.contains("none");
    if no_prompt && prompts.len() > 1 {
        return Err(refuse(
            "invalid_request",
            "prompt=none cannot be combined with another prompt",
        ));
    }
    let max_age = match params.max_age.as_deref() {
        None => None,
        Some(age) => Some(age.parse::<u32>().map_err(|_| {
            refuse(
                "invalid_request",
                "max_age must be a whole number of seconds",
            )
        })?),
    };
    let fresh_login =
        prompts.contains("login") || prompts.contains("select_account") || max_age == Some(0);
    let signed_in_since = max_age.map(|age| now - i64::from(age));
    let too_long = |v: &Option<String>| v.as_ref().is_some_and(|v| v.len() > MAX_VALUE);
    if too_long(&params.nonce) || too_long(&params.login_hint) {
        return Err(refuse("invalid_request", "nonce or login_hint is too long"));
    }
    Ok(Pending {
        client_id: client.id.clone(),
        redirect_uri: requested.clone(),
        scope,
        state,
        nonce: params.nonce,
        code_challenge,
        no_prompt,
        ask_consent: prompts.contains("consent"),
        fresh_login,
        signed_in_since,
        signed_in_as: None,
        login_hint: params.login_hint,
        expires_at: 0,
        csrf: String::new(),
    })
}

/// A PKCE S256 challenge: the base64url SHA-256 of a verifier, 43 characters.
fn is_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `uri` with `pairs` added to its query, form-encoded.
pub fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    let query = serde_urlencoded::to_string(pairs).unwrap_or_default();
    let joiner = if uri.contains('?') {
        if uri.ends_with('?') || uri.ends_with('&') {
            ""
        } else {
            "&"
        }
    } else {
        "?"
    };
    format!("{uri}{joiner}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::oidc::clients::ClientSpec;
    use crate::auth::oidc::jws::Alg;

    fn client(public: bool) -> Client {
        let settled = ClientSpec {
            name: "App".into(),
            redirect_uris: vec!["https://app.example.com/cb".into()],
            public,
            ..Default::default()
        }
        .settle()
        .unwrap();
        Client {
            id: "app".into(),
            name: settled.name,
            secret_hash: (!public).then(|| "x".into()),
            redirect_uris: settled.redirect_uris,
            post_logout_redirect_uris: vec![],
            web_origins: vec![],
            grants: settled.grants,
            scopes: settled.scopes,
            id_token_alg: Alg::Rs256,
            first_party: false,
            require_pkce: settled.require_pkce,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    fn params() -> AuthorizeParams {
        AuthorizeParams {
            client_id: Some("app".into()),
            redirect_uri: Some("https://app.example.com/cb".into()),
            response_type: Some("code".into()),
            scope: Some("openid email".into()),
            state: Some("s1".into()),
            nonce: Some("n1".into()),
            code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
            code_challenge_method: Some("S256".into()),
            ..Default::default()
        }
    }

    fn error(params: AuthorizeParams) -> &'static str {
        match check(params, Some(&client(true)), 1000) {
            Err(Refusal::Redirect { error, state, .. }) => {
                assert_eq!(state.as_deref(), Some("s1"));
                error
            }
            other => panic!("expected a redirect, got {other:?}"),
        }
    }

    #[test]
    fn a_wrong_client_or_redirect_uri_is_shown_never_redirected() {
        let page =
            |p: AuthorizeParams| matches!(check(p, Some(&client(true)), 0), Err(Refusal::Page(_)));
        assert!(page(AuthorizeParams {
            client_id: None,
            ..params()
        }));
        assert!(page(AuthorizeParams {
            client_id: Some("other".into()),
            ..params()
        }));
        assert!(page(AuthorizeParams {
            redirect_uri: None,
            ..params()
        }));
        assert!(page(AuthorizeParams {
            redirect_uri: Some("https://evil.example.com/cb".into()),
            // Even with another fault, the redirect URI comes first.
            response_type: Some("token".into()),
            ..params()
        }));
        assert!(matches!(check(params(), None, 0), Err(Refusal::Page(_))));
    }

    #[test]
    fn the_rest_is_refused_back_to_the_client_with_its_state() {
        assert_eq!(
            error(AuthorizeParams {
                response_type: Some("token".into()),
                ..params()
            }),
            "unsupported_response_type"
        );
        assert_eq!(
            error(AuthorizeParams {
                response_type: Some("code id_token".into()),
                ..params()
            }),
            "unsupported_response_type"
        );
        assert_eq!(
            error(AuthorizeParams {
                scope: Some("email".into()),
                ..params()
            }),
            "invalid_scope"
        );
        assert_eq!(
            error(AuthorizeParams {
                scope: Some("openid admin".into()),
                ..params()
            }),
            "invalid_scope"
        );
        assert_eq!(
            error(AuthorizeParams {
                code_challenge: None,
                code_challenge_method: None,
                ..params()
            }),
            "invalid_request"
        );
        assert_eq!(
            error(AuthorizeParams {
                code_challenge_method: None,
                ..params()
            }),
            "invalid_request",
            "plain by default"
        );
        assert_eq!(
            error(AuthorizeParams {
                code_challenge_method: Some("plain".into()),
                ..params()
            }),
            "invalid_request"
        );
        assert_eq!(
            error(AuthorizeParams {
                code_challenge: Some("short".into()),
                ..params()
            }),
            "invalid_request"
        );
        assert_eq!(
            error(AuthorizeParams {
                prompt: Some("none login".into()),
                ..params()
            }),
            "invalid_request"
        );
        assert_eq!(
            error(AuthorizeParams {
                max_age: Some("-1".into()),
                ..params()
            }),
            "invalid_request"
        );
        assert_eq!(
            error(AuthorizeParams {
                request: Some("x".into()),
                ..params()
            }),
            "request_not_supported"
        );
        assert_eq!(
            error(AuthorizeParams {
                response_mode: Some("fragment".into()),
                ..params()
            }),
            "invalid_request"
        );
    }

    #[test]
    fn prompt_and_max_age_set_how_fresh_the_sign_in_must_be() {
        let pending = |p| check(p, Some(&client(true)), 1000).unwrap();
        let plain = pending(params());
        assert_eq!((plain.fresh_login, plain.signed_in_since), (false, None));
        assert!(
            pending(AuthorizeParams {
                prompt: Some("login".into()),
                ..params()
            })
            .fresh_login
        );
        assert!(
            pending(AuthorizeParams {
                max_age: Some("0".into()),
                ..params()
            })
            .fresh_login
        );
        assert_eq!(
            pending(AuthorizeParams {
                max_age: Some("300".into()),
                ..params()
            })
            .signed_in_since,
            Some(700)
        );
        assert!(
            pending(AuthorizeParams {
                prompt: Some("none".into()),
                ..params()
            })
            .no_prompt
        );
        assert!(
            pending(AuthorizeParams {
                prompt: Some("consent".into()),
                ..params()
            })
            .ask_consent
        );
        let confidential = check(
            AuthorizeParams {
                code_challenge: None,
                code_challenge_method: None,
                ..params()
            },
            Some(&Client {
                require_pkce: false,
                ..client(false)
            }),
            0,
        )
        .unwrap();
        assert_eq!(confidential.code_challenge, None);
    }

    #[test]
    fn query_pairs_are_added_to_what_the_uri_has() {
        assert_eq!(
            with_query("https://a/cb", &[("code", "x y"), ("state", "&")]),
            "https://a/cb?code=x+y&state=%26"
        );
        assert_eq!(
            with_query("https://a/cb?v=1", &[("code", "c")]),
            "https://a/cb?v=1&code=c"
        );
    }
}
