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

use std::time::Duration;

use utoipa::OpenApi as _;

pub use config::AuditConfig;

use crate::kernel::ServiceContext;
use crate::kernel::bus::Unhandled;
use crate::kernel::db::Db;
use crate::kernel::http::server::{self, Running};
use crate::kernel::offsets;
use crate::middleware::bearer::TokenCheck;
use crate::middleware::permit::Permits;

/// The service's name: its registry entry, SQLite file and PostgreSQL schema.
pub const NAME: &str = "audit";

crate::service_db!(sqlite: "migrations/sqlite/audit", postgres: "migrations/postgres/audit");

/// Events recorded in one transaction, at most.
const INGEST_BATCH: usize = 500;

/// Starts the service: its database and key, the consumer recording every
/// source's events, the upkeep (checkpoints, retention), and its API,
/// registered in the registry.
pub async fn start(ctx: &ServiceContext, config: AuditConfig) -> anyhow::Result<Running> {
    let db = open_db(&ctx.database, &ctx.data_dir).await?;
    let key = keys::AuditKey::load(&ctx.data_dir)?;
    let audit = service::Audit::new(
        db.clone(),
        key,
        witness::path(&config.witness_path, &ctx.data_dir),
        ctx.clock.clone(),
        ctx.metrics.clone(),
    )?;
    audit.prepare().await?;
    let permits = Permits::for_service(ctx, NAME).await?;
    let changes = permits
        .listen(&format!("{NAME}.permits"), &ctx.bus, ctx.shutdown.clone())
        .await?;
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
    let (check, revocations) = TokenCheck::for_service(ctx, NAME).await?;
    let service = server::Service {
        name: NAME,
        db,
        http: http::routes(audit.clone(), permits, check),
        api: http::ApiDoc::openapi(),
        grpc: grpc::server(audit),
        produces_events: false,
        listen: config.listen,
        advertise_url: config.advertise_url,
        background: vec![recording, upkeep, changes, revocations],
    };
    server::serve_service(ctx, service).await
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
