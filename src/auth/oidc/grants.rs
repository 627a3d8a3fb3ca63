//! The token endpoint: client authentication (`client_secret_basic`,
//! `client_secret_post`, or `none` for a public client) and the grants,
//! authorization code with PKCE and refresh token. What it answers carries
//! the access token (PASETO v4, as from the JSON API), the refresh token
//! when one is due, and the ID token.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use diesel::Connection as _;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::clients::{Client, Grant, secret_hash};
use super::error::OAuthError;
use super::jws::half_hash;
use super::service::Provider;
use super::store::{self, CodeRow};
use crate::auth::error::AuthError;
use crate::auth::events::{self, oidc_event, session_event};
use crate::auth::service::open_session;
use crate::auth::sessions::{end_session, new_refresh_token};
use crate::auth::store::SessionRow;
use crate::middleware::ids::{SessionId, UserId};
use crate::middleware::token;

/// The token endpoint's form (and the client's credentials, for
/// `client_secret_post`).
#[derive(Debug, Default, Deserialize)]
pub struct TokenForm {
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
    pub scope: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

/// A successful token response (RFC 6749 §5.1, OpenID Connect Core §3.1.3.3).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    pub scope: String,
}

impl Provider {
    /// Finds and authenticates the client of a token, introspection or
    /// revocation request.
    pub async fn authenticate_client(
        &self,
        headers: &HeaderMap,
        form_id: Option<&str>,
        form_secret: Option<&str>,
    ) -> Result<Client, OAuthError> {
        let basic = basic_credentials(headers)?;
        let used_basic = basic.is_some();
        let (id, secret) = match (basic, form_secret) {
            (Some(_), Some(_)) => {
                return Err(OAuthError::InvalidRequest(
                    "the client authenticated in more than one way".into(),
                ));
            }
            (Some((id, secret)), None) => {
                if form_id.is_some_and(|f| f != id) {
                    return Err(OAuthError::InvalidRequest(
                        "client_id differs from the Authorization header's".into(),
                    ));
                }
                (id, Some(secret))
            }
            (None, secret) => match form_id {
                Some(id) => (id.to_owned(), secret.map(str::to_owned)),
                None => return Err(OAuthError::InvalidClient { basic: false }),
            },
        };
        let refused = OAuthError::InvalidClient { basic: used_basic };
        if id.is_empty() || id.len() > 128 {
            return Err(refused);
        }
        let Some(client) = self.clients.find(&id).await? else {
            return Err(refused);
        };
        let authenticated = match (&secret, client.is_public()) {
            (None, true) => true,
            (Some(secret), false) => client.secret_matches(secret),
            _ => false,
        };
        if !authenticated {
            tracing::info!(client_id = %client.id, "client authentication failed");
            return Err(refused);
        }
        Ok(client)
    }

    /// `POST /oauth2/token`.
    pub async fn token(
        &self,
        headers: &HeaderMap,
        form: TokenForm,
    ) -> Result<TokenResponse, OAuthError> {
        let client = self
            .authenticate_client(
                headers,
                form.client_id.as_deref(),
                form.client_secret.as_deref(),
            )
            .await?;
        let grant = match form.grant_type.as_deref() {
            None => return Err(OAuthError::InvalidRequest("grant_type is missing".into())),
            Some(name) => Grant::parse(name).ok_or(OAuthError::UnsupportedGrantType)?,
        };
        if !client.grants.contains(&grant) {
            return Err(OAuthError::UnauthorizedClient(format!(
                "the client may not use the {} grant",
                grant.name()
            )));
        }
        match grant {
            Grant::AuthorizationCode => self.exchange_code(&client, form).await,
            Grant::RefreshToken => self.refresh(&client, form).await,
            Grant::ClientCredentials => Err(OAuthError::UnsupportedGrantType),
        }
    }

    /// The authorization code grant: one use of a code, by its client, with
    /// its redirect URI and PKCE verifier.
    async fn exchange_code(
        &self,
        client: &Client,
        form: TokenForm,
    ) -> Result<TokenResponse, OAuthError> {
        let code = form
            .code
            .filter(|c| !c.is_empty() && c.len() <= 256)
            .ok_or_else(|| OAuthError::InvalidRequest("code is missing".into()))?;
        let redirect_uri = form
            .redirect_uri
            .ok_or_else(|| OAuthError::InvalidRequest("redirect_uri is missing".into()))?;
        let code_hash = secret_hash(&code);
        let now = self.auth.clock.now();
        let lookup = code_hash.clone();
        let row = self
            .auth
            .db
            .run(move |c| store::code(c, &lookup))
            .await?
            .ok_or_else(|| OAuthError::InvalidGrant("the code is unknown".into()))?;
        if row.used_at.is_some() {
            return Err(self.code_reused(row).await);
        }
        if row.client_id != client.id {
            return Err(OAuthError::InvalidGrant(
                "the code was issued to another client".into(),
            ));
        }
        if row.expires_at <= now.naive_utc() {
            return Err(OAuthError::InvalidGrant("the code has expired".into()));
        }
        if row.redirect_uri != redirect_uri {
            return Err(OAuthError::InvalidGrant(
                "redirect_uri differs from the authorization request's".into(),
            ));
        }
        check_pkce(row.code_challenge.as_deref(), form.code_verifier.as_deref())?;

        let user = UserId::parse(&row.user_id).map_err(|e| AuthError::Internal(e.to_string()))?;
        let scope: BTreeSet<String> = row.scope.split(' ').map(str::to_owned).collect();
        let mut session = self.auth.new_session(user, now);
        session.client_id = Some(client.id.clone());
        session.scope = Some(row.scope.clone());
        session.browser_session_id = Some(row.browser_session_id.clone());
        let refresh = self.refresh_due(client, &scope).then(new_refresh_token);
        let access_token = self.access_token(user, &session, now).await?;
        let id_token = self
            .id_token(
                client,
                &session,
                IdTokenFacts {
                    auth_time: row.auth_time.and_utc(),
                    amr: row
                        .amr
                        .split(' ')
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    nonce: row.nonce.clone(),
                },
                &access_token,
                now,
            )
            .await?;
        let event = session_event(
            &events::SESSION_CREATED,
            &session,
            "authorization_code",
            self.auth.tokens_expire_by(now),
        );
        let issued = oidc_event(&events::OIDC_TOKEN_ISSUED, &client.id, |e| {
            e.user_id = session.user_id.clone();
            e.session_id = session.id.clone();
            e.scope = row.scope.clone();
            e.grant = Grant::AuthorizationCode.name().into();
        });
        let refresh_hash = refresh.as_ref().map(|(_, h)| h.clone());
        let auth_time = row.auth_time.and_utc();
        let stored = session.clone();
        let claimed = self
            .auth
            .db
            .run(move |c| {
                c.transaction(|c| {
                    if store::claim_code(c, &code_hash, now.naive_utc())?.is_none() {
                        return Ok(false);
                    }
                    // Refused when the password was reset since the sign-in.
                    open_session(c, &stored, refresh_hash.as_deref(), &event, auth_time, now)?;
                    store::set_code_session(c, &code_hash, &stored.id)?;
                    crate::kernel::outbox::enqueue(c, &issued, now)?;
                    Ok::<_, AuthError>(true)
                })
            })
            .await;
        match claimed {
            Ok(true) => {}
            // Another exchange of the same code got there first.
            Ok(false) => {
                let lookup = secret_hash(&code);
                if let Some(row) = self.auth.db.run(move |c| store::code(c, &lookup)).await? {
                    return Err(self.code_reused(row).await);
                }
                return Err(OAuthError::InvalidGrant("the code is unknown".into()));
            }
            Err(AuthError::InvalidCredentials) => {
                return Err(OAuthError::InvalidGrant(
                    "the password was reset since this sign-in".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        self.auth.relay.wake();
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: self.auth.tokens.access_ttl().num_seconds(),
            refresh_token: refresh.map(|(token, _)| token),
            id_token,
            scope: row.scope,
        })
    }

    /// A second use of a code: refused, and the session its first use
    /// opened is ended with its tokens and refresh tokens (RFC 6749 §4.1.2).
    async fn code_reused(&self, row: CodeRow) -> OAuthError {
        tracing::warn!(client_id = %row.client_id, "an authorization code was used twice; its session is ended");
        if let Some(session_id) = row.session_id {
            let now = self.auth.clock.now();
            let by = self.auth.tokens_expire_by(now);
            let ended = self
                .auth
                .db
                .run(move |c| {
                    c.transaction(|c| end_session(c, &session_id, "code_reused", now, by))
                })
                .await;
            match ended {
                Ok(_) => self.auth.relay.wake(),
                Err(e) => return e.into(),
            }
        }
        OAuthError::InvalidGrant("the code was already used".into())
    }

    /// The refresh token grant: rotation as in the JSON API, bound to the
    /// client the session was opened for.
    async fn refresh(&self, client: &Client, form: TokenForm) -> Result<TokenResponse, OAuthError> {
        let presented = form
            .refresh_token
            .ok_or_else(|| OAuthError::InvalidRequest("refresh_token is missing".into()))?;
        let (pair, session) = match self.auth.refresh_bound(&presented, Some(&client.id)).await {
            Ok(refreshed) => refreshed,
            Err(AuthError::InvalidRefreshToken) => {
                return Err(OAuthError::InvalidGrant(
                    "the refresh token is unknown, expired, revoked or another client's".into(),
                ));
            }
            Err(AuthError::RefreshReused) => {
                return Err(OAuthError::InvalidGrant(
                    "the refresh token was already used; its session has been ended".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let granted = session.scope.clone().unwrap_or_default();
        if let Some(asked) = form.scope.as_deref() {
            let granted: BTreeSet<&str> = granted.split(' ').collect();
            if asked
                .split(' ')
                .any(|s| !s.is_empty() && !granted.contains(s))
            {
                return Err(OAuthError::InvalidScope(
                    "a refresh may not ask for more than was granted".into(),
                ));
            }
        }
        let browser = match session.browser_session_id.clone() {
            Some(id) => {
                self.auth
                    .db
                    .run(move |c| store::browser_session_by_id(c, &id))
                    .await?
            }
            None => None,
        };
        let facts = IdTokenFacts {
            auth_time: browser
                .as_ref()
                .map_or(session.created_at, |b| b.auth_time)
                .and_utc(),
            amr: browser
                .map(|b| {
                    b.amr
                        .split(' ')
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            nonce: None,
        };
        let now = self.auth.clock.now();
        let id_token = self
            .id_token(client, &session, facts, &pair.access_token, now)
            .await?;
        Ok(TokenResponse {
            access_token: pair.access_token,
            token_type: "Bearer",
            expires_in: pair.expires_in,
            refresh_token: Some(pair.refresh_token),
            id_token,
            scope: granted,
        })
    }

    /// Whether a session opened for `client` with `scope` gets a refresh token.
    fn refresh_due(&self, client: &Client, scope: &BTreeSet<String>) -> bool {
        client.grants.contains(&Grant::RefreshToken)
            && (scope.contains("offline_access")
                || (client.first_party && self.config.first_party_refresh))
    }

    /// An access token of `session`, as the JSON API signs them.
    async fn access_token(
        &self,
        user: UserId,
        session: &SessionRow,
        now: DateTime<Utc>,
    ) -> Result<String, AuthError> {
        let signer = self.auth.keys().signer().await?;
        let sid = SessionId::parse(&session.id).map_err(|e| AuthError::Internal(e.to_string()))?;
        Ok(token::sign(
            &signer.secret,
            &signer.id,
            user,
            sid,
            &self.auth.tokens.issuer_audience(),
            now,
            now + self.auth.tokens.access_ttl(),
        )?)
    }

    /// The ID token of `session` for `client`, when it was granted `openid`.
    async fn id_token(
        &self,
        client: &Client,
        session: &SessionRow,
        facts: IdTokenFacts,
        access_token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, AuthError> {
        let scope: BTreeSet<&str> = session
            .scope
            .as_deref()
            .unwrap_or_default()
            .split(' ')
            .collect();
        if !scope.contains("openid") {
            return Ok(None);
        }
        let user =
            UserId::parse(&session.user_id).map_err(|e| AuthError::Internal(e.to_string()))?;
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(&*self.issuer));
        claims.insert("sub".into(), json!(session.user_id));
        claims.insert("aud".into(), json!(client.id));
        claims.insert("azp".into(), json!(client.id));
        claims.insert("iat".into(), json!(now.timestamp()));
        claims.insert(
            "exp".into(),
            json!((now + self.auth.tokens.access_ttl()).timestamp()),
        );
        claims.insert("auth_time".into(), json!(facts.auth_time.timestamp()));
        if let Some(nonce) = facts.nonce {
            claims.insert("nonce".into(), json!(nonce));
        }
        if let Some(sid) = &session.browser_session_id {
            claims.insert("sid".into(), json!(sid));
        }
        if !facts.amr.is_empty() {
            claims.insert("amr".into(), json!(facts.amr));
        }
        claims.insert(
            "at_hash".into(),
            json!(half_hash(client.id_token_alg, access_token)),
        );
        self.profile_claims(user, &scope, &mut claims).await?;
        let signer = self
            .auth
            .keys()
            .id_token_signer(client.id_token_alg)
            .await?;
        Ok(Some(signer.sign(&Value::Object(claims))?))
    }

    /// The claims `scope` lets a client have of `user`, beside `sub`:
    /// `email` and `email_verified` (with `email`), `name` (with
    /// `profile`), and `roles` (with `roles`: the roles bound to the user
    /// everywhere, from authz).
    pub(super) async fn profile_claims(
        &self,
        user: UserId,
        scope: &BTreeSet<&str>,
        claims: &mut Map<String, Value>,
    ) -> Result<(), AuthError> {
        if scope.contains("email") || scope.contains("profile") {
            let account = self.user(user).await?;
            if scope.contains("email") {
                claims.insert("email".into(), json!(account.email));
                claims.insert("email_verified".into(), json!(account.email_verified));
            }
            if scope.contains("profile") {
                claims.insert("name".into(), json!(account.display_name));
            }
        }
        if scope.contains("roles") {
            claims.insert("roles".into(), json!(self.roles(user).await?));
        }
        Ok(())
    }
}

/// What an ID token says of the sign-in behind it.
struct IdTokenFacts {
    auth_time: DateTime<Utc>,
    amr: Vec<String>,
    nonce: Option<String>,
}

/// The id and secret of an `Authorization: Basic` header, each
/// form-decoded after the base64 (RFC 6749 §2.3.1); `None` without one.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let refused = || OAuthError::InvalidClient { basic: true };
    let value = value.to_str().map_err(|_| refused())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(refused());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::InvalidRequest(
            "clients authenticate with Authorization: Basic or in the form".into(),
        ));
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| refused())?;
    let decoded = String::from_utf8(decoded).map_err(|_| refused())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(refused)?;
    let form_decode = |part: &str| -> Result<String, OAuthError> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(&format!("v={part}")).map_err(|_| refused())?;
        Ok(pairs.into_iter().next().map(|(_, v)| v).unwrap_or_default())
    };
    Ok(Some((form_decode(id)?, form_decode(secret)?)))
}

/// Checks the PKCE verifier against the code's challenge: both or neither
/// (a request that sent a challenge cannot drop PKCE at the exchange, nor
/// one that sent none add a verifier).
fn check_pkce(challenge: Option<&str>, verifier: Option<&str>) -> Result<(), OAuthError> {
    match (challenge, verifier) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(OAuthError::InvalidGrant(
            "code_verifier is missing; the authorization request sent a challenge".into(),
        )),
        (None, Some(_)) => Err(OAuthError::InvalidGrant(
            "the authorization request sent no code_challenge".into(),
        )),
        (Some(challenge), Some(verifier)) => {
            let well_formed = (43..=128).contains(&verifier.len())
                && verifier
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
            if well_formed
                && URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) == challenge
            {
                Ok(())
            } else {
                Err(OAuthError::InvalidGrant(
                    "code_verifier does not match the code_challenge".into(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_needs_the_verifier_of_the_challenge_and_cannot_be_dropped_or_added() {
        // The challenge as Python's hashlib and base64 make it.
        let verifier = "dBjftJeZ4CVP-mJ92K1pYjbUeWjQbE1XofPZx3TMWTk".to_owned();
        let challenge = "o3ExKMsh-zi9cYCTPFS8du4yc-bviyL8CCQqp_8_jqw";
        assert!(check_pkce(Some(challenge), Some(&verifier)).is_ok());
        assert!(check_pkce(None, None).is_ok());
        for (c, v) in [
            (Some(challenge), None),
            (None, Some(verifier.as_str())),
            (
                Some(challenge),
                Some("dBjftJeZ4CVP-mJ92K1pYjbUeWjQbE1XofPZx3TMWTp"),
            ),
            (Some(challenge), Some(challenge)),
        ] {
            assert!(
                matches!(check_pkce(c, v), Err(OAuthError::InvalidGrant(_))),
                "{c:?} {v:?}"
            );
        }
    }

    #[test]
    fn basic_credentials_are_form_decoded_after_the_base64() {
        let mut headers = HeaderMap::new();
        assert!(basic_credentials(&headers).unwrap().is_none());
        let encoded = STANDARD.encode("my%20app:p%3Ass+word");
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Basic {encoded}").parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&headers).unwrap(),
            Some(("my app".into(), "p:ss word".into()))
        );
        headers.insert(http::header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert!(matches!(
            basic_credentials(&headers),
            Err(OAuthError::InvalidClient { basic: true })
        ));
    }
}
