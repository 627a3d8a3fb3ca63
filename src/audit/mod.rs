//! The audit service: an append-only log of what happened on the platform,
//! each entry chained to the one before by its hash, so that an entry
//! changed, removed or added is found (see `model.rs`).
//!
//! It records every service's events from the bus (`events.rs` says what
//! an entry makes of an event), signs the chain's head now and then, and
//! serves the log to callers holding `audit:read`.
//!
//! Rooms: `model.rs` (entries, their canonical form and hash, the
//! verifier), `signed.rs` (what the key signs: checkpoints and markers),
//! `keys.rs` (the key that signs them, and the one entries' MACs are made
//! with),
//! `store.rs` (appending to the chain, checkpoints, listing, verifying),
//! `witness.rs` (the newest checkpoint, kept outside the database),
//! `events.rs` (events to entries), `service.rs` (recording, reading,
//! verifying, upkeep), `http.rs` (the public API), `grpc.rs` (`Record`, for
//! services that audit synchronously), `schema.rs` (its
//! tables), `config.rs` (its section), `error.rs` (the error table). This
//! file wires them up.

pub mod config;
pub mod error;
pub mod events;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod model;
pub mod schema;
pub mod service;
pub mod signed;
pub mod store;
pub mod witness;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use utoipa::OpenApi as _;

pub use config::AuditConfig;

use crate::kernel::ServiceContext;
use crate::kernel::bus::Unhandled;
use crate::kernel::config::DatabaseConfig;
use crate::kernel::db::{Db, DbError, Migrations};
use crate::kernel::health::Probes;
use crate::kernel::http::server::{self, Running, ServiceApp};
use crate::kernel::offsets;
use crate::middleware::bearer::TokenCheck;
use crate::middleware::permit::Permits;

/// The service's name: its registry entry, SQLite file and PostgreSQL schema.
pub const NAME: &str = "audit";

#[cfg(feature = "sqlite")]
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite/audit");
#[cfg(feature = "postgres")]
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres/audit");

static MIGRATIONS: Migrations = Migrations {
    #[cfg(feature = "sqlite")]
    sqlite: || SQLITE_MIGRATIONS,
    #[cfg(feature = "postgres")]
    postgres: || POSTGRES_MIGRATIONS,
};

/// Opens audit's database (its SQLite file under `data_dir`, or its
/// PostgreSQL schema) with its migrations applied.
pub async fn open_db(database: &DatabaseConfig, data_dir: &Path) -> Result<Db, DbError> {
    Db::open(database, data_dir, NAME, &MIGRATIONS).await
}

/// Events recorded in one transaction, at most.
const INGEST_BATCH: usize = 500;

/// Starts the service: its database and key, the consumer recording every
/// source's events, the upkeep (checkpoints, retention), and its API,
/// registered in the registry.
pub async fn start(ctx: &ServiceContext, config: AuditConfig) -> anyhow::Result<Running> {
    let db = open_db(&ctx.database, &ctx.data_dir).await?;
    let key = keys::AuditKey::load(&ctx.data_dir).map_err(anyhow::Error::msg)?;
    let audit = service::Audit::new(
        db.clone(),
        key,
        witness::path(&config.witness_path, &ctx.data_dir),
        ctx.clock.clone(),
        ctx.metrics.clone(),
    )?;
    audit.prepare().await?;
    let permits =
        Permits::for_service(ctx, NAME, Duration::from_millis(config.permission_cache_ms)).await?;
    let changes = permits
        .listen(&format!("{NAME}.permits"), &ctx.bus, ctx.shutdown.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    let recording = record_events(ctx, &config, &db, audit.clone()).await?;
    let retention = (config.retention_days > 0).then(|| {
        chrono::Duration::days(
            i64::try_from(config.retention_days).unwrap_or(i64::MAX / 86_400_000),
        )
    });
    let upkeep = audit.upkeep(
        Duration::from_secs(config.checkpoint_every_secs.max(1)),
        retention,
        ctx.shutdown.clone(),
    );
    let (check, revocations) = TokenCheck::for_service(ctx, NAME)
        .await
        .map_err(anyhow::Error::msg)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<crate::proto::audit::v1::audit_server::AuditServer<grpc::Grpc>>()
        .await;
    let app = ServiceApp {
        name: NAME,
        http: http::routes(audit.clone(), permits, check)
            .merge(crate::kernel::openapi::serve(&http::ApiDoc::openapi())),
        grpc: tonic::service::Routes::new(grpc::server(audit)).add_service(health_service),
        probes: Probes(vec![Arc::new(db)]),
        io_threads: None,
    };
    server::launch(
        ctx,
        app,
        config.listen,
        config.advertise_url,
        health,
        vec![recording, upkeep, changes, revocations],
    )
    .await
}

/// Records the configured sources' events until shutdown, a batch per
/// transaction, from where it got to before.
async fn record_events(
    ctx: &ServiceContext,
    config: &AuditConfig,
    db: &Db,
    audit: service::Audit,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let sources: Vec<&str> = config.sources.iter().map(String::as_str).collect();
    offsets::follow_stored(ctx, db, NAME, &sources, INGEST_BATCH, move |deliveries| {
        let audit = audit.clone();
        async move {
            audit
                .record(NAME, deliveries)
                .await
                .map(|_| ())
                .map_err(|e| Unhandled::Retry(e.to_string()))
        }
    })
    .await
}
