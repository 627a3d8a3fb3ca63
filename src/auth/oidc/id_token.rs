//! What the grants hand out beside the refresh token: the access token
//! (PASETO v4, as the JSON API signs it) and the ID token with the claims
//! its scopes allow.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::clients::Client;
use super::jws::half_hash;
use super::service::Provider;
use crate::auth::error::AuthError;
use crate::auth::store::SessionRow;
use crate::middleware::ids::{SessionId, Subject, UserId};
use crate::middleware::token;

impl Provider {
    /// An access token of `session`, as the JSON API signs them.
    pub(super) async fn access_token(
        &self,
        subject: impl Into<Subject>,
        session: &SessionRow,
        now: DateTime<Utc>,
    ) -> Result<String, AuthError> {
        let signer = self.auth.keys().signer().await?;
        let sid = SessionId::parse(&session.id).map_err(|e| AuthError::Internal(e.to_string()))?;
        Ok(token::sign(
            &signer.secret,
            &signer.id,
            subject,
            sid,
            &self.auth.tokens.issuer_audience(),
            now,
            now + self.auth.tokens.access_ttl(),
        )?)
    }

    /// The ID token of `session` for `client`, when it was granted `openid`.
    pub(super) async fn id_token(
        &self,
        client: &Client,
        session: &SessionRow,
        facts: IdTokenFacts,
        access_token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, AuthError> {
        let scope = session.scopes();
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

/// The methods of a sign-in as stored, space-separated (`amr`).
pub(super) fn methods(stored: &str) -> Vec<String> {
    stored
        .split(' ')
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What an ID token says of the sign-in behind it.
pub(super) struct IdTokenFacts {
    pub auth_time: DateTime<Utc>,
    pub amr: Vec<String>,
    pub nonce: Option<String>,
}
