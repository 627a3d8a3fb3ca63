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
mod tests;
