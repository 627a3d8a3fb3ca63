//! The authorization service: what a subject may do. Permissions are
//! `resource_type:action` strings with wildcards, roles are named sets of
//! them, groups of users may nest, and bindings give a user or a group a
//! role everywhere, on one resource type, or on one resource and what lies
//! under it.
//!
//! Rooms: `model/` (the model, and how a check is decided, with the chain
//! that decided it, on one in-memory revision of the policy), `store/` (the
//! policy stored and read back, every write a new revision with its event
//! in the outbox), `schema.rs` (its tables), `service.rs` (checks from the
//! policy held in memory, kept current by revision, and the writes),
//! `escalation.rs` (no write gives more than its maker holds), `events.rs`
//! (its events, and what identity's events change),
//! `http/` (the admin API and the checks for signed-in users), `grpc.rs`
//! (the internal API), `error.rs` (the error table). This file wires them
//! up, and holds what the command line writes (`grant`).

pub mod config;
pub mod error;
pub mod escalation;
mod events;
pub mod grpc;
pub mod http;
pub mod model;
pub mod schema;
pub mod service;
pub mod store;

use std::time::Duration;

pub use config::AuthzConfig;

use crate::kernel::ServiceContext;
use crate::kernel::bus::Unhandled;
use crate::kernel::db::Db;
use crate::kernel::http::server::{self, Running};
use crate::kernel::outbox;
use crate::middleware::bearer::TokenCheck;
use utoipa::OpenApi as _;

/// The service's name: its registry entry, SQLite file and PostgreSQL schema.
pub const NAME: &str = "authz";

crate::service_db!(sqlite: "migrations/sqlite/authz", postgres: "migrations/postgres/authz");

/// Starts the service: its database, the policy in memory, its gRPC API,
/// registered in the registry.
pub async fn start(ctx: &ServiceContext, config: AuthzConfig) -> anyhow::Result<Running> {
    let db = open_db(&ctx.database, &ctx.data_dir).await?;
    let (relay, relay_task) = outbox::spawn(ctx, NAME, db.clone());
    let authz = service::Authz::new(
        db.clone(),
        ctx.clock.clone(),
        config.max_parent_depth,
        Duration::from_millis(config.refresh_ms),
    )
    .await?
    .with_relay(relay)
    .with_reach_cache(config.reach_cache_entries);
    let mut background = vec![relay_task, follow_identity(ctx, &db, authz.clone()).await?];
    let (check, revocations) = TokenCheck::for_service(ctx, NAME).await?;
    background.push(revocations);
    let service = server::Service {
        name: NAME,
        db,
        http: http::routes(authz.clone(), check),
        api: http::ApiDoc::openapi(),
        grpc: grpc::server(authz),
        produces_events: true,
        listen: config.listen,
        advertise_url: config.advertise_url,
        background,
    };
    server::serve_service(ctx, service).await
}

/// Handles identity's events until shutdown, from where it got to before.
async fn follow_identity(
    ctx: &ServiceContext,
    db: &Db,
    authz: service::Authz,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    crate::kernel::offsets::follow_stored(ctx, db, NAME, &["identity"], 1, move |deliveries| {
        let authz = authz.clone();
        async move {
            for delivery in deliveries {
                authz
                    .on_identity_event(delivery)
                    .await
                    .map_err(|e| match e {
                        error::AuthzError::Corrupt(e) => Unhandled::Unreadable(e),
                        other => Unhandled::Retry(other.to_string()),
                    })?;
            }
            Ok(())
        }
    })
    .await
}

/// Binds `role` to `user` everywhere from the command line (`gatehouse
/// admin grant`); answers the revision, or none when the user held it
/// already. A running instance sees it within `refresh_ms`; its event
/// waits in the outbox for the service's relay.
pub async fn grant(
    ctx: &ServiceContext,
    user: uuid::Uuid,
    role: &str,
) -> anyhow::Result<Option<i64>> {
    let db = open_db(&ctx.database, &ctx.data_dir).await?;
    let binding = model::Binding {
        id: uuid::Uuid::now_v7(),
        subject: model::Subject::User(user),
        role: role.to_owned(),
        scope: model::Scope::Everywhere,
        expires_at: None,
    };
    let by = store::By {
        actor: None,
        at: ctx.clock.now(),
    };
    Ok(db
        .run(move |conn| store::bind_once(conn, &by, &binding))
        .await?)
}
