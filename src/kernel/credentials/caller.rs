//! The calling side: a service's key signs one token per callee, used until
//! it is [`REMINT`] old.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use pasetors::keys::AsymmetricSecretKey;
use pasetors::version4::{PublicToken, V4};
use tonic::metadata::AsciiMetadataValue;

use super::*;
use crate::kernel::clock::Clock;
use crate::kernel::locks;

/// Signs the calls one service makes.
pub struct Caller {
    pub(super) service: String,
    pub(super) secret: AsymmetricSecretKey<V4>,
    pub(super) footer: String,
    pub(super) clock: Arc<dyn Clock>,
    /// By callee: the token and when it was signed.
    pub(super) tokens: RwLock<HashMap<String, (AsciiMetadataValue, DateTime<Utc>)>>,
}

impl Caller {
    /// The token of a call to `callee`, for the [`HEADER`] field.
    pub fn token(&self, callee: &str) -> Result<AsciiMetadataValue, CredentialError> {
        let now = self.clock.now();
        if let Some((value, signed)) = locks::read(&self.tokens).get(callee)
            && now - *signed < REMINT
            && now >= *signed
        {
            return Ok(value.clone());
        }
        let value = self.sign(callee, now)?;
        locks::write(&self.tokens).insert(callee.to_owned(), (value.clone(), now));
        Ok(value)
    }

    fn sign(
        &self,
        callee: &str,
        now: DateTime<Utc>,
    ) -> Result<AsciiMetadataValue, CredentialError> {
        let claims = Claims {
            iss: self.service.clone(),
            aud: callee.to_owned(),
            iat: rfc3339(now),
            exp: rfc3339(now + LIFETIME),
        };
        let payload = serde_json::to_vec(&claims)?;
        let token = PublicToken::sign(
            &self.secret,
            &payload,
            Some(self.footer.as_bytes()),
            Some(IMPLICIT),
        )?;
        Ok(AsciiMetadataValue::try_from(token)?)
    }
}
