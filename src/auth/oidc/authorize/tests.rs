//! The checks of an authorization request, case by case.

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
