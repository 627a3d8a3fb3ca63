//! Where the token check gets auth's public keys, and the sessions ended
//! while tokens of theirs may still be live.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use pasetors::keys::AsymmetricPublicKey;
use pasetors::version4::V4;

use crate::kernel::rpc::{Clients, RpcError};
use crate::middleware::ids::SessionId;
use crate::proto::auth::v1::auth_client::AuthClient;
use crate::proto::auth::v1::{GetPublicKeysRequest, ListRevokedSessionsRequest};

/// Auth's keys or ended sessions could not be learned.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Channel(#[from] RpcError),
    #[error("auth: {}", .0.message())]
    Call(#[from] tonic::Status),
    #[error("key {kid}: {source}")]
    Key {
        kid: String,
        source: pasetors::errors::Error,
    },
}

/// The public keys, by PASERK id, and how long they may be kept.
pub struct KeySet {
    pub keys: HashMap<String, AsymmetricPublicKey<V4>>,
    pub ttl: Duration,
}

/// Where the check gets public keys from, and the sessions ended before
/// it started.
#[async_trait]
pub trait KeySource: Send + Sync {
    async fn fetch(&self) -> Result<KeySet, FetchError>;

    /// The sessions revoked at or after `since`.
    async fn revoked_since(
        &self,
        _since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<SessionId>, FetchError> {
        Ok(Vec::new())
    }
}

/// Auth's `GetPublicKeys`, reached through the registry.
pub struct AuthKeys {
    pub clients: Clients,
}

#[async_trait]
impl KeySource for AuthKeys {
    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let channel = self.clients.channel("auth").await?;
        let response = AuthClient::new(channel)
            .get_public_keys(GetPublicKeysRequest {})
            .await?
            .into_inner();
        let mut keys = HashMap::new();
        for k in response.keys {
            let key =
                crate::middleware::token::public_key_from_paserk(&k.paserk).map_err(|source| {
                    FetchError::Key {
                        kid: k.kid.clone(),
                        source,
                    }
                })?;
            keys.insert(k.kid, key);
        }
        Ok(KeySet {
            keys,
            ttl: Duration::from_secs(response.cache_ttl_secs.max(1) as u64),
        })
    }

    async fn revoked_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<SessionId>, FetchError> {
        let channel = self.clients.channel("auth").await?;
        let response = AuthClient::new(channel)
            .list_revoked_sessions(ListRevokedSessionsRequest {
                since_unix_ms: since.timestamp_millis(),
            })
            .await?
            .into_inner();
        Ok(response
            .session_ids
            .iter()
            .filter_map(|id| SessionId::parse(id).ok())
            .collect())
    }
}
