//! The called side: tokens checked against the public keys trusted,
//! remembered until they expire; the middleware that answers a call
//! without a valid one `UNAUTHENTICATED`.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use pasetors::Public;
use pasetors::footer::Footer;
use pasetors::keys::AsymmetricPublicKey;
use pasetors::token::UntrustedToken;
use pasetors::version4::{PublicToken, V4};

use super::*;
use crate::kernel::clock::Clock;
use crate::kernel::locks;

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the call carries no service credential")]
    Missing,
    #[error("the call's credential is not a service token")]
    Malformed,
    #[error("the call's credential was signed by a key this service does not trust")]
    UnknownKey,
    #[error("the call's credential does not verify")]
    BadSignature,
    #[error("the call's credential is for another service")]
    WrongAudience,
    #[error("the call's credential has expired, or is not valid yet")]
    Expired,
}

/// Checks the calls made to one service.
pub struct Callee {
    pub(super) service: String,
    pub(super) trusted: HashMap<String, (Arc<str>, AsymmetricPublicKey<V4>)>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) remembered: RwLock<HashMap<String, Verified>>,
}

/// A token a callee has verified: the calling service, and when the
/// token expires.
type Verified = (Arc<str>, DateTime<Utc>);

impl Callee {
    /// The calling service, when `token` (the [`HEADER`] field) is a
    /// valid token of it for this service.
    pub fn check(&self, token: Option<&[u8]>) -> Result<Arc<str>, Refusal> {
        let token =
            std::str::from_utf8(token.ok_or(Refusal::Missing)?).map_err(|_| Refusal::Malformed)?;
        let now = self.clock.now();
        if let Some((caller, expires)) = locks::read(&self.remembered).get(token) {
            return if now < *expires {
                Ok(caller.clone())
            } else {
                Err(Refusal::Expired)
            };
        }
        let (caller, expires) = self.verify(token, now)?;
        let mut remembered = locks::write(&self.remembered);
        if remembered.len() >= REMEMBERED {
            // Callers sign a token a minute each: only the expired go.
            remembered.retain(|_, (_, expires)| now < *expires);
            if remembered.len() >= REMEMBERED {
                remembered.clear();
            }
        }
        remembered.insert(token.to_owned(), (caller.clone(), expires));
        Ok(caller)
    }

    fn verify(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<(Arc<str>, DateTime<Utc>), Refusal> {
        let untrusted =
            UntrustedToken::<Public, V4>::try_from(token).map_err(|_| Refusal::Malformed)?;
        let mut footer = Footer::new();
        footer
            .parse_bytes(untrusted.untrusted_footer())
            .map_err(|_| Refusal::Malformed)?;
        let kid = footer
            .get_claim("kid")
            .and_then(|v| v.as_str())
            .ok_or(Refusal::Malformed)?;
        let (caller, key) = self.trusted.get(kid).ok_or(Refusal::UnknownKey)?;
        let trusted = PublicToken::verify(key, &untrusted, None, Some(IMPLICIT))
            .map_err(|_| Refusal::BadSignature)?;
        let claims: Claims =
            serde_json::from_str(trusted.payload()).map_err(|_| Refusal::Malformed)?;
        let time = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| Refusal::Malformed)
        };
        let (issued, expires) = (time(&claims.iat)?, time(&claims.exp)?);
        if claims.iss != **caller {
            return Err(Refusal::UnknownKey);
        }
        if claims.aud != self.service {
            return Err(Refusal::WrongAudience);
        }
        if now + LEEWAY < issued || now >= expires || expires - issued > LIFETIME {
            return Err(Refusal::Expired);
        }
        Ok((caller.clone(), expires))
    }
}

/// The calling service, as its credential proved, in a request's
/// extensions.
#[derive(Debug, Clone)]
pub struct CallingService(pub Arc<str>);

/// Where gRPC health is served: open to anyone who can reach the port
/// (load balancers, probes).
const OPEN_PREFIX: &str = "/grpc.health.v1.Health/";

/// Middleware over a service's gRPC routes: a call without a valid
/// credential is answered `UNAUTHENTICATED`; health checks pass.
pub async fn require(
    State(callee): State<Arc<Callee>>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.uri().path().starts_with(OPEN_PREFIX) {
        return next.run(request).await;
    }
    let token = request.headers().get(HEADER);
    match callee.check(token.map(http::HeaderValue::as_bytes)) {
        Ok(caller) => {
            request.extensions_mut().insert(CallingService(caller));
            next.run(request).await
        }
        Err(refusal) => {
            tracing::debug!(service = %callee.service, path = request.uri().path(), reason = %refusal, "refused a call");
            tonic::Status::unauthenticated(refusal.to_string()).into_http()
        }
    }
}
