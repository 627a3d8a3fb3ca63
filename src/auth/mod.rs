//! The auth service: logins, PASETO v4 access tokens, sessions with rotating
//! refresh tokens and reuse detection, revocation, and signing-key rotation.
//!
//! Rooms as in every service: `service.rs`, `store.rs`, `schema.rs`,
//! `http.rs`, `grpc.rs`, `error.rs`, `events.rs` (the events of sessions,
//! and what identity's events end), plus `keys.rs` (the key ring and the
//! key-encryption key) and `sessions.rs` (ending sessions, refresh
//! tokens). This file wires them up and runs the background
//! work: the outbox relay, the consumer of identity's events, and the key
//! rotation schedule.

pub mod config;
pub mod error;
mod events;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod oidc;
pub mod schema;
pub mod service;
mod sessions;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use utoipa::OpenApi as _;

pub use config::AuthConfig;
use keys::{Kek, KeyRing};
use service::Auth;

use crate::kernel::ServiceContext;
use crate::kernel::bus::Unhandled;
use crate::kernel::db::Db;
use crate::kernel::http::server::{self, Running};
use crate::kernel::outbox;

/// The service's name: registry entry, SQLite file, PostgreSQL schema, event source.
pub const NAME: &str = "auth";

crate::service_db!(sqlite: "migrations/sqlite/auth", postgres: "migrations/postgres/auth");

/// Opens the key ring on the database configured in `ctx`.
async fn key_ring(ctx: &ServiceContext, config: &AuthConfig) -> anyhow::Result<(Db, Kek, KeyRing)> {
    let db = open_db(&ctx.database, &ctx.data_dir).await?;
    let kek = Kek::load(&config.key_encryption_key, &ctx.data_dir)?;
    let ring = KeyRing::new(
        db.clone(),
        kek.clone(),
        ctx.clock.clone(),
        chrono::Duration::seconds(i64::try_from(config.key_cache_ttl_secs).unwrap_or(300)),
        ctx.tokens.access_ttl(),
    );
    Ok((db, kek, ring))
}

/// Makes the first signing key when there is none, then checks that this
/// instance's key-encryption key opens every key stored: a key sealed with
/// another would fail every sign-in here, and one sealed here would fail
/// the other instances'. Checked after the first key is made, so that of
/// two instances starting on an empty database at once, the one whose key
/// differs finds the other's key.
async fn ensure_keys(ring: &KeyRing) -> anyhow::Result<()> {
    ring.ensure_one().await?;
    if !ring.opens_stored_keys().await? || !ring.opens_id_token_keys().await? {
        anyhow::bail!(
            "auth.key_encryption_key does not open the signing keys in the database: \
             every auth instance on one database needs the same key (see \
             docs/operations.md, \"Losing the key-encryption key\")"
        );
    }
    Ok(())
}

/// `gatehouse keys rotate`: publishes a new signing key that signs after
/// one verifier key-cache lifetime, and a new ID-token key for each
/// algorithm in use. Answers the access tokens' new key id.
pub async fn rotate_keys(ctx: &ServiceContext, config: &AuthConfig) -> anyhow::Result<String> {
    let (_, _, ring) = key_ring(ctx, config).await?;
    ensure_keys(&ring).await?;
    Ok(ring.rotate().await?)
}

/// `gatehouse oidc client create`: registers a client of the provider on
/// the configured database.
pub async fn register_client(
    ctx: &ServiceContext,
    config: &AuthConfig,
    spec: oidc::clients::ClientSpec,
) -> anyhow::Result<oidc::registry::Issued> {
    let (db, _, ring) = key_ring(ctx, config).await?;
    ensure_keys(&ring).await?;
    Ok(
        oidc::registry::ClientRegistry::new(db, ctx.clock.clone(), None, ring)
            .create_client(spec)
            .await?,
    )
}

pub async fn start(ctx: &ServiceContext, config: AuthConfig) -> anyhow::Result<Running> {
    let permits = crate::middleware::permit::Permits::for_service(ctx, NAME).await?;
    let changes = permits.listen(NAME, &ctx.bus, ctx.shutdown.clone()).await?;
    let (db, kek, ring) = key_ring(ctx, &config).await?;
    ensure_keys(&ring).await?;
    let (relay, relay_task) = outbox::spawn(ctx, NAME, db.clone());
    let (listen, advertise) = (config.listen, config.advertise_url.clone());
    let rotation_every = config.key_rotation_interval_secs;
    let issuer = oidc::config::issuer(&config.oidc.issuer, &ctx.server.public_url)?;
    let oidc_config = config.oidc.clone();
    let auth = Auth::new(
        db.clone(),
        ring.clone(),
        kek,
        ctx.clients.clone(),
        ctx.clock.clone(),
        relay,
        Arc::new(config),
        ctx.tokens.clone(),
    );
    let provider = oidc::Provider::new(auth.clone(), issuer, oidc_config);
    let mut background = vec![
        relay_task,
        changes,
        provider.sweep(ctx.shutdown.clone()),
        consume_identity_events(ctx, &db, auth.clone()).await?,
    ];
    if rotation_every > 0 {
        background.push(rotation_schedule(ctx, ring, rotation_every));
    }

    let service = server::Service {
        name: NAME,
        db,
        http: http::routes(auth.clone())
            .merge(oidc::http::routes(provider.clone()))
            .merge(oidc::admin::routes(provider, permits)),
        api: http::ApiDoc::openapi().merge_from(oidc::admin::AdminDoc::openapi()),
        grpc: grpc::server(auth),
        produces_events: true,
        listen,
        advertise_url: advertise,
        background,
    };
    server::serve_service(ctx, service).await
}

/// Handles identity's events until shutdown, from where it got to before.
async fn consume_identity_events(
    ctx: &ServiceContext,
    db: &Db,
    auth: Auth,
) -> anyhow::Result<JoinHandle<()>> {
    crate::kernel::offsets::follow_stored(ctx, db, NAME, &["identity"], 1, move |deliveries| {
        let auth = auth.clone();
        async move {
            for delivery in deliveries {
                auth.on_identity_event(delivery)
                    .await
                    .map_err(|e| Unhandled::Retry(e.to_string()))?;
            }
            Ok(())
        }
    })
    .await
}

/// Rotates the signing key whenever the newest is older than `every_secs`,
/// looking a tenth as often (at least every second, at most every minute).
fn rotation_schedule(ctx: &ServiceContext, ring: KeyRing, every_secs: u64) -> JoinHandle<()> {
    let look_every = Duration::from_secs((every_secs / 10).clamp(1, 60));
    let shutdown = ctx.shutdown.clone();
    let every = chrono::Duration::seconds(i64::try_from(every_secs).unwrap_or(i64::MAX / 1000));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(look_every) => {},
                () = shutdown.cancelled() => break,
            }
            if let Err(e) = ring.rotate_when_older_than(every).await {
                tracing::warn!(error = %e, "scheduled key rotation failed");
            }
        }
    })
}
