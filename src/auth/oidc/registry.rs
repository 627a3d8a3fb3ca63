//! The provider's registered clients: made, read, changed, given a new
//! secret and deleted, by the admin API and the CLI.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use diesel::Connection as _;

use super::clients::{Client, ClientSpec, SpecError, new_client_id, new_secret};
use super::store;
use crate::auth::error::AuthError;
use crate::auth::events::{self, oidc_event};
use crate::auth::keys::KeyRing;
use crate::auth::sessions::end_session;
use crate::kernel::clock::Clock;
use crate::kernel::db::Db;
use crate::kernel::locks;
use crate::kernel::outbox::{self, Relay};

/// The clients, on auth's database.
#[derive(Clone)]
pub struct ClientRegistry {
    db: Db,
    clock: Arc<dyn Clock>,
    relay: Option<Relay>,
    keys: KeyRing,
    /// The origins registered on clients, as read last, and when.
    origins: Arc<Mutex<Option<Origins>>>,
}

/// The origins registered on clients, and when they were read.
type Origins = (Instant, Arc<HashSet<String>>);

/// How long the registered origins are kept before they are read again.
const ORIGINS_KEPT: Duration = Duration::from_secs(5);

/// A client just made or given a new secret: the secret is shown this once.
#[derive(Debug)]
pub struct Issued {
    pub client: Client,
    pub secret: Option<String>,
}

/// Most clients one list answers.
const LIST_LIMIT: i64 = 1000;

impl ClientRegistry {
    /// `relay`: the outbox relay to wake for the clients' events (none
    /// from the command line, whose events a running auth relays).
    pub fn new(db: Db, clock: Arc<dyn Clock>, relay: Option<Relay>, keys: KeyRing) -> Self {
        Self {
            db,
            clock,
            relay,
            keys,
            origins: Arc::default(),
        }
    }

    /// Whether `origin` is registered on a client (read again when the
    /// last reading is older than a few seconds, and after any change
    /// here).
    pub async fn allows_origin(&self, origin: &str) -> Result<bool, AuthError> {
        let kept = locks::lock(&self.origins)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < ORIGINS_KEPT)
            .map(|(_, set)| set.clone());
        let set = match kept {
            Some(set) => set,
            None => {
                let set: Arc<HashSet<String>> =
                    Arc::new(self.db.run(store::web_origins).await?.into_iter().collect());
                *locks::lock(&self.origins) = Some((Instant::now(), set.clone()));
                set
            }
        };
        Ok(set.contains(origin))
    }

    /// Registers a client; a confidential one gets a secret, shown once.
    pub async fn create_client(&self, spec: ClientSpec) -> Result<Issued, AuthError> {
        let settled = spec.settle().map_err(invalid)?;
        // The client's ID-token key is published before it can sign in
        // anyone, so that relying parties find it in the JWKS they fetch.
        self.keys.ensure_id_token_key(settled.id_token_alg).await?;
        let (secret, hash) = if settled.public {
            (None, None)
        } else {
            let (secret, hash) = new_secret();
            (Some(secret), Some(hash))
        };
        let now = self.clock.now();
        let id = new_client_id();
        let event = oidc_event(&events::OIDC_CLIENT_CREATED, &id, |_| {});
        let client = self
            .db
            .run(move |c| {
                c.transaction(|c| {
                    let client = store::insert_client(c, &id, &settled, hash, now)?;
                    outbox::enqueue(c, &event, now)?;
                    Ok::<_, AuthError>(client)
                })
            })
            .await?;
        self.wake();
        tracing::info!(client_id = %client.id, "client registered");
        Ok(Issued { client, secret })
    }

    /// The client `id`, if it is registered.
    pub async fn find(&self, id: &str) -> Result<Option<Client>, AuthError> {
        let id = id.to_owned();
        self.db.run(move |c| store::client(c, &id)).await
    }

    pub async fn client(&self, id: &str) -> Result<Client, AuthError> {
        self.find(id).await?.ok_or(AuthError::ClientNotFound)
    }

    pub async fn clients(&self) -> Result<Vec<Client>, AuthError> {
        self.db.run(|c| store::clients(c, LIST_LIMIT)).await
    }

    /// Replaces a client's registration. A client made public loses its
    /// secret; one made confidential gets a new one, shown once.
    pub async fn update_client(&self, id: &str, spec: ClientSpec) -> Result<Issued, AuthError> {
        let settled = spec.settle().map_err(invalid)?;
        self.keys.ensure_id_token_key(settled.id_token_alg).await?;
        let id = id.to_owned();
        let now = self.clock.now();
        let event = oidc_event(&events::OIDC_CLIENT_UPDATED, &id, |_| {});
        let (client, secret) = self
            .db
            .run(move |c| {
                c.transaction(|c| {
                    let existing = store::client(c, &id)?.ok_or(AuthError::ClientNotFound)?;
                    let (secret, hash) = match (settled.public, existing.secret_hash.clone()) {
                        (true, _) => (None, None),
                        (false, Some(kept)) => (None, Some(kept)),
                        (false, None) => {
                            let (secret, hash) = new_secret();
                            (Some(secret), Some(hash))
                        }
                    };
                    let client = store::update_client(c, &existing, &settled, hash, now)?;
                    outbox::enqueue(c, &event, now)?;
                    Ok::<_, AuthError>((client, secret))
                })
            })
            .await?;
        self.wake();
        Ok(Issued { client, secret })
    }

    /// Gives a confidential client a new secret, shown once; the old one
    /// stops working at once.
    pub async fn rotate_secret(&self, id: &str) -> Result<Issued, AuthError> {
        let client = self.client(id).await?;
        if client.is_public() {
            return Err(AuthError::Invalid {
                field: "client_id",
                message: "a public client has no secret".into(),
            });
        }
        let (secret, hash) = new_secret();
        let now = self.clock.now();
        let client_id = client.id.clone();
        let event = oidc_event(&events::OIDC_CLIENT_SECRET_ROTATED, &client.id, |_| {});
        self.db
            .run(move |c| {
                c.transaction(|c| {
                    if !store::set_secret(c, &client_id, &hash, now)? {
                        return Err(AuthError::ClientNotFound);
                    }
                    outbox::enqueue(c, &event, now)?;
                    Ok(())
                })
            })
            .await?;
        self.wake();
        Ok(Issued {
            client: self.client(id).await?,
            secret: Some(secret),
        })
    }

    /// Deletes a client with its codes and consents, and ends the sessions
    /// opened for it.
    pub async fn delete_client(
        &self,
        id: &str,
        tokens_expire_by: DateTime<Utc>,
    ) -> Result<(), AuthError> {
        let id = id.to_owned();
        let now = self.clock.now();
        let event = oidc_event(&events::OIDC_CLIENT_DELETED, &id, |_| {});
        self.db
            .run(move |c| {
                c.transaction(|c| {
                    if !store::delete_client(c, &id)? {
                        return Err(AuthError::ClientNotFound);
                    }
                    for session in store::sessions_of_client(c, &id)? {
                        end_session(c, &session, "client_deleted", now, tokens_expire_by)?;
                    }
                    outbox::enqueue(c, &event, now)?;
                    Ok(())
                })
            })
            .await?;
        self.wake();
        Ok(())
    }

    fn wake(&self) {
        *locks::lock(&self.origins) = None;
        if let Some(relay) = &self.relay {
            relay.wake();
        }
    }
}

fn invalid(e: SpecError) -> AuthError {
    AuthError::Invalid {
        field: e.field,
        message: e.message,
    }
}
