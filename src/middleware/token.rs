//! Access tokens: PASETO v4.public (Ed25519), signed by auth, verified by
//! anyone holding auth's public keys.
//!
//! Claims: `sub` (user id), `sid` (session id), `iss`, `aud`, `iat`, `nbf`,
//! `exp` (RFC 3339), `jti`, and `sub_type` = `client` when the subject is a
//! client acting for itself (the client credentials grant), its id in
//! `sub`; the footer holds the signing key's PASERK id as `kid`. Time checks use the caller's clock, never the system's, so tests
//! can expire tokens at will.

use chrono::{DateTime, SecondsFormat, Utc};
use pasetors::Public;
use pasetors::footer::Footer;
use pasetors::keys::{AsymmetricPublicKey, AsymmetricSecretKey};
use pasetors::paserk::Id;
use pasetors::token::UntrustedToken;
use pasetors::version4::{PublicToken, V4};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use super::ids::{ClientId, SessionId, Subject, UserId};

/// The user who made a request, as proven by a verified access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: UserId,
    pub session_id: SessionId,
    pub expires_at: DateTime<Utc>,
}

/// Whoever a verified access token speaks for: a user, or a client acting
/// for itself. The platform's own APIs serve users only
/// ([`super::bearer::require`]); the gateway lets either through to the
/// routes it guards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    User(Principal),
    Client {
        client_id: ClientId,
        session_id: SessionId,
        expires_at: DateTime<Utc>,
    },
}

impl Holder {
    pub fn subject(&self) -> Subject {
        match self {
            Holder::User(p) => Subject::User(p.user_id),
            Holder::Client { client_id, .. } => Subject::Client(*client_id),
        }
    }

    pub fn session_id(&self) -> SessionId {
        match self {
            Holder::User(p) => p.session_id,
            Holder::Client { session_id, .. } => *session_id,
        }
    }

    pub fn expires_at(&self) -> DateTime<Utc> {
        match self {
            Holder::User(p) => p.expires_at,
            Holder::Client { expires_at, .. } => *expires_at,
        }
    }

    /// The user, when it is one.
    pub fn user(&self) -> Option<&Principal> {
        match self {
            Holder::User(p) => Some(p),
            Holder::Client { .. } => None,
        }
    }
}

/// Why a token was refused. `code()` is the stable reason clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token was sent")]
    Missing,
    #[error("the token is not a v4.public PASETO of this platform")]
    Malformed,
    #[error("the token was signed with an unknown key")]
    UnknownKey,
    #[error("the token signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued for another audience")]
    WrongAudience,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the session has ended")]
    Revoked,
    #[error("tokens cannot be checked right now")]
    Unavailable,
}

impl TokenError {
    pub fn code(self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::Malformed => "token_malformed",
            TokenError::UnknownKey => "token_unknown_key",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongAudience => "token_wrong_audience",
            TokenError::WrongIssuer => "token_wrong_issuer",
            TokenError::Revoked => "session_revoked",
            TokenError::Unavailable => "token_check_unavailable",
        }
    }

    pub fn from_code(code: &str) -> Option<TokenError> {
        use TokenError::*;
        [
            Missing,
            Malformed,
            UnknownKey,
            BadSignature,
            Expired,
            NotYetValid,
            WrongAudience,
            WrongIssuer,
            Revoked,
            Unavailable,
        ]
        .into_iter()
        .find(|e| e.code() == code)
    }
}

/// What a token says, as signed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub sid: String,
    pub iss: String,
    pub aud: String,
    pub iat: String,
    pub nbf: String,
    pub exp: String,
    pub jti: String,
    /// `client` when `sub` is a client's id; absent for a user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_type: Option<String>,
}

/// What `sub_type` says of a client.
const CLIENT: &str = "client";

pub use crate::kernel::config::TokenConfig;

/// The token check's side of the `[tokens]` section.
impl TokenConfig {
    /// The issuer and audience a verifier insists on.
    pub fn issuer_audience(&self) -> IssuerAudience {
        IssuerAudience {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
        }
    }
}

/// Issuer and audience a verifier insists on.
#[derive(Debug, Clone)]
pub struct IssuerAudience {
    pub issuer: String,
    pub audience: String,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An access token that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot write the claims: {0}")]
    Claims(#[from] serde_json::Error),
    #[error("cannot sign: {0}")]
    Paseto(#[from] pasetors::errors::Error),
}

/// Signs an access token for `subject` in `session_id`, valid from `now`
/// until `expires_at`, with the key `kid`.
pub fn sign(
    key: &AsymmetricSecretKey<V4>,
    kid: &Id,
    subject: impl Into<Subject>,
    session_id: SessionId,
    expected: &IssuerAudience,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<String, SignError> {
    let subject = subject.into();
    let claims = Claims {
        sub: subject.as_uuid().to_string(),
        sid: session_id.to_string(),
        iss: expected.issuer.clone(),
        aud: expected.audience.clone(),
        iat: rfc3339(now),
        nbf: rfc3339(now),
        exp: rfc3339(expires_at),
        jti: Uuid::now_v7().to_string(),
        sub_type: matches!(subject, Subject::Client(_)).then(|| CLIENT.to_owned()),
    };
    let payload = serde_json::to_vec(&claims)?;
    let mut footer = Footer::new();
    footer.key_id(kid);
    let footer = footer.to_string()?;
    Ok(PublicToken::sign(
        key,
        &payload,
        Some(footer.as_bytes()),
        None,
    )?)
}

/// The key id a token names in its footer, before anything is verified.
pub fn key_id(token: &str) -> Result<String, TokenError> {
    let untrusted =
        UntrustedToken::<Public, V4>::try_from(token).map_err(|_| TokenError::Malformed)?;
    let mut footer = Footer::new();
    footer
        .parse_bytes(untrusted.untrusted_footer())
        .map_err(|_| TokenError::Malformed)?;
    footer
        .get_claim("kid")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or(TokenError::Malformed)
}

/// Verifies `token` with `key` and checks its claims against `expect` at `now`.
pub fn verify(
    token: &str,
    key: &AsymmetricPublicKey<V4>,
    expected: &IssuerAudience,
    now: DateTime<Utc>,
) -> Result<Holder, TokenError> {
    let untrusted =
        UntrustedToken::<Public, V4>::try_from(token).map_err(|_| TokenError::Malformed)?;
    let trusted =
        PublicToken::verify(key, &untrusted, None, None).map_err(|_| TokenError::BadSignature)?;
    let claims: Claims =
        serde_json::from_str(trusted.payload()).map_err(|_| TokenError::Malformed)?;
    let time = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| TokenError::Malformed)
    };
    let (nbf, exp) = (time(&claims.nbf)?, time(&claims.exp)?);
    time(&claims.iat)?;
    if claims.iss != expected.issuer {
        return Err(TokenError::WrongIssuer);
    }
    if claims.aud != expected.audience {
        return Err(TokenError::WrongAudience);
    }
    if now < nbf {
        return Err(TokenError::NotYetValid);
    }
    if now >= exp {
        return Err(TokenError::Expired);
    }
    let session_id = SessionId::parse(&claims.sid).map_err(|_| TokenError::Malformed)?;
    match claims.sub_type.as_deref() {
        None => Ok(Holder::User(Principal {
            user_id: UserId::parse(&claims.sub).map_err(|_| TokenError::Malformed)?,
            session_id,
            expires_at: exp,
        })),
        Some(CLIENT) => Ok(Holder::Client {
            client_id: ClientId::parse(&claims.sub).map_err(|_| TokenError::Malformed)?,
            session_id,
            expires_at: exp,
        }),
        Some(_) => Err(TokenError::Malformed),
    }
}

/// The PASERK (`k4.public.…`) form of a public key.
pub fn public_key_paserk(key: &AsymmetricPublicKey<V4>) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = pasetors::paserk::FormatAsPaserk::fmt(key, &mut out);
    out
}

/// The PASERK id (`k4.pid.…`) of a public key.
pub fn key_id_of(key: &AsymmetricPublicKey<V4>) -> String {
    let mut out = String::new();
    let _ = pasetors::paserk::FormatAsPaserk::fmt(&Id::from(key), &mut out);
    out
}

/// Reads a `k4.public.…` PASERK.
pub fn public_key_from_paserk(
    text: &str,
) -> Result<AsymmetricPublicKey<V4>, pasetors::errors::Error> {
    AsymmetricPublicKey::<V4>::try_from(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pasetors::keys::{AsymmetricKeyPair, Generate};

    fn issuer_audience() -> IssuerAudience {
        IssuerAudience {
            issuer: "gatehouse".into(),
            audience: "gatehouse".into(),
        }
    }

    fn pair() -> (AsymmetricKeyPair<V4>, Id) {
        let kp = AsymmetricKeyPair::<V4>::generate().unwrap();
        let id = Id::from(&kp.public);
        (kp, id)
    }

    #[test]
    fn a_signed_token_verifies_and_names_its_key() {
        let (kp, kid) = pair();
        let now = Utc::now();
        let (user, session) = (UserId::now_v7(), SessionId::now_v7());
        let token = sign(
            &kp.secret,
            &kid,
            user,
            session,
            &issuer_audience(),
            now,
            now + chrono::Duration::minutes(15),
        )
        .unwrap();
        assert!(token.starts_with("v4.public."));
        let mut kid_text = String::new();
        pasetors::paserk::FormatAsPaserk::fmt(&kid, &mut kid_text).unwrap();
        assert_eq!(key_id(&token).unwrap(), kid_text);
        let p = verify(&token, &kp.public, &issuer_audience(), now).unwrap();
        assert_eq!(
            (p.subject(), p.session_id()),
            (Subject::User(user), session)
        );
        assert!(p.user().is_some());
    }

    #[test]
    fn a_clients_token_speaks_for_the_client_and_never_passes_for_a_user() {
        let (kp, kid) = pair();
        let now = Utc::now();
        let (client, session) = (ClientId::from_uuid(Uuid::new_v4()), SessionId::now_v7());
        let token = sign(
            &kp.secret,
            &kid,
            client,
            session,
            &issuer_audience(),
            now,
            now + chrono::Duration::minutes(5),
        )
        .unwrap();
        let caller = verify(&token, &kp.public, &issuer_audience(), now).unwrap();
        assert_eq!(caller.subject(), Subject::Client(client));
        assert_eq!(caller.session_id(), session);
        assert_eq!(caller.user(), None);
        // The same id signed as a user's is the user's: the kind is signed.
        let as_user = sign(
            &kp.secret,
            &kid,
            UserId::from_uuid(client.as_uuid()),
            session,
            &issuer_audience(),
            now,
            now + chrono::Duration::minutes(5),
        )
        .unwrap();
        let caller = verify(&as_user, &kp.public, &issuer_audience(), now).unwrap();
        assert!(matches!(caller, Holder::User(_)));
    }

    #[test]
    fn time_issuer_audience_and_key_are_all_checked() {
        let (kp, kid) = pair();
        let (other, _) = pair();
        let now = Utc::now();
        let exp = now + chrono::Duration::minutes(15);
        let token = sign(
            &kp.secret,
            &kid,
            UserId::now_v7(),
            SessionId::now_v7(),
            &issuer_audience(),
            now,
            exp,
        )
        .unwrap();
        assert_eq!(
            verify(&token, &kp.public, &issuer_audience(), exp),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(
                &token,
                &kp.public,
                &issuer_audience(),
                now - chrono::Duration::seconds(5)
            ),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            verify(&token, &other.public, &issuer_audience(), now),
            Err(TokenError::BadSignature)
        );
        let elsewhere = IssuerAudience {
            audience: "other".into(),
            ..issuer_audience()
        };
        assert_eq!(
            verify(&token, &kp.public, &elsewhere, now),
            Err(TokenError::WrongAudience)
        );
        let foreign = IssuerAudience {
            issuer: "other".into(),
            ..issuer_audience()
        };
        assert_eq!(
            verify(&token, &kp.public, &foreign, now),
            Err(TokenError::WrongIssuer)
        );
    }

    #[test]
    fn tampered_and_foreign_tokens_are_refused() {
        let (kp, kid) = pair();
        let now = Utc::now();
        let token = sign(
            &kp.secret,
            &kid,
            UserId::now_v7(),
            SessionId::now_v7(),
            &issuer_audience(),
            now,
            now + chrono::Duration::minutes(5),
        )
        .unwrap();
        // Flip one character of the signed body.
        let mut bytes = token.clone().into_bytes();
        let i = "v4.public.".len() + 5;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert_eq!(
            verify(&flipped, &kp.public, &issuer_audience(), now),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify("garbage", &kp.public, &issuer_audience(), now),
            Err(TokenError::Malformed)
        );
        assert!(
            verify(
                &token[..token.len() / 2],
                &kp.public,
                &issuer_audience(),
                now
            )
            .is_err()
        );
        assert_eq!(key_id("v4.local.abc"), Err(TokenError::Malformed));
    }
}
