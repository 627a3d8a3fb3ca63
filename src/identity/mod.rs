//! The identity service: users, registration, passwords (scrypt), password
//! resets, email verification and sign-in throttling.
//!
//! Rooms, as in every service: `service.rs` (domain logic), `store.rs`
//! (Diesel queries), `schema.rs` (tables), `http.rs` (public API), `grpc.rs`
//! (internal API), `error.rs` (the error table), `events.rs` (its events' outbox rows),
//! plus `model.rs` (the user and its field rules), `password.rs` (hashing)
//! with `calibrate.rs` (the cost for a chosen time), `credentials.rs`
//! (checking a password) with `throttle.rs` (failed sign-ins slowed down)
//! and `device.rs` (the tokens of devices that signed in before),
//! `links.rs` (reset and verification links) with `link_queue.rs` (their
//! queue and tokens), `mail/` (how links reach users: the mail queue and
//! its delivery, by SMTP or to the log), and `admin.rs` (the admin API over
//! other users' accounts, guarded by authz).
//! This file wires them up.

pub mod admin;
pub mod calibrate;
pub mod config;
mod credentials;
mod device;
pub mod error;
mod events;
pub mod grpc;
pub mod http;
mod link_queue;
pub mod links;
pub mod mail;
pub mod model;
pub mod password;
pub mod schema;
pub mod service;
pub mod store;
mod throttle;

use std::sync::Arc;

use utoipa::OpenApi as _;

use crate::kernel::ServiceContext;
use crate::kernel::db::Db;
use crate::kernel::http::server::{self, Running};
use crate::kernel::outbox;
use crate::middleware::bearer::TokenCheck;
use crate::middleware::permit::Permits;
pub use config::IdentityConfig;
use mail::notifier::Notifier;
use mail::queue::MailQueue;
use service::Identity;

/// The service's name: its registry entry, SQLite file, PostgreSQL schema and event source.
pub const NAME: &str = "identity";

crate::service_db!(sqlite: "migrations/sqlite/identity", postgres: "migrations/postgres/identity");

/// The key device tokens are made with: derived from identity's service
/// key, so every instance of a deployment takes the others' tokens and a
/// restart keeps them; a key of the process's own where it holds none.
fn device_key(ctx: &ServiceContext) -> [u8; 32] {
    ctx.keyring
        .derived(NAME, "device tokens")
        .unwrap_or_else(|| {
            use rand::RngCore as _;
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            key
        })
}

/// What seals the tokens in the mail queue: a key derived from identity's
/// service key, so every instance reads the mail the others queued; else
/// the owner-only file `<data_dir>/identity.mail.key`.
fn mail_queue(ctx: &ServiceContext) -> anyhow::Result<MailQueue> {
    let sealer = match ctx.keyring.derived(NAME, "mail queue") {
        Some(key) => crate::kernel::seal::Sealer::new(&key),
        None => crate::kernel::seal::Sealer::from_file(&ctx.data_dir.join("identity.mail.key"))?,
    };
    Ok(MailQueue::new(sealer))
}

/// Identity's database, opened and migrated, and its password hasher, once
/// the config's password rule is known to be one a password can meet.
async fn store_and_hasher(
    ctx: &ServiceContext,
    config: &IdentityConfig,
) -> anyhow::Result<(Db, password::Hasher)> {
    let policy = &config.password;
    if policy.min_length > policy.max_length.min(policy.max_bytes / 4) {
        anyhow::bail!(
            "identity.password: min_length ({}) must not exceed max_length ({}) or a quarter of max_bytes ({})",
            policy.min_length,
            policy.max_length,
            policy.max_bytes
        );
    }
    let db = open_db(&ctx.database, &ctx.data_dir).await?;
    let hasher = password::Hasher::new(&config.scrypt, ctx.metrics.clone()).await?;
    Ok((db, hasher))
}

/// The identity service without a server of its own: its database opened
/// and migrated, its outbox relay running. For `start` and for embedding
/// (the benchmark serves its routes behind other middleware).
pub async fn open(
    ctx: &ServiceContext,
    config: IdentityConfig,
    notifier: Arc<dyn Notifier>,
) -> anyhow::Result<(Identity, Db, tokio::task::JoinHandle<()>)> {
    let (db, hasher) = store_and_hasher(ctx, &config).await?;
    let (relay, relay_task) = outbox::spawn(ctx, NAME, db.clone());
    let queue = mail_queue(ctx)?;
    let delivery = mail::spawn(
        mail::Delivery {
            db: db.clone(),
            queue: queue.clone(),
            notifier,
            clock: ctx.clock.clone(),
            metrics: ctx.metrics.clone(),
            link_base_url: if config.link_base_url.is_empty() {
                ctx.server.public_url.trim_end_matches('/').to_owned()
            } else {
                config.link_base_url.clone()
            },
            config: config.mail.clone(),
        },
        ctx.shutdown.clone(),
    );
    if config.lockout.is_some() {
        tracing::warn!(
            "identity.lockout is no longer used: failed sign-ins are throttled by \
             [identity.throttle], which never locks an account (see docs/identity-api.md)"
        );
    }
    let identity = Identity::new(
        db.clone(),
        hasher,
        queue,
        ctx.clock.clone(),
        relay,
        Arc::new(config),
        device_key(ctx),
    );
    let links = links::spawn(identity.clone(), ctx.shutdown.clone());
    // One handle for the background tasks. The events and mail of links
    // asked for while stopping wait in the outbox and the mail queue for
    // the next start if the relay or delivery has gone.
    let background = tokio::spawn(async move {
        if let Err(e) = links.await {
            tracing::error!(error = %e, "the link worker failed");
        }
        if let Err(e) = delivery.await {
            tracing::error!(error = %e, "mail delivery failed");
        }
        if let Err(e) = relay_task.await {
            tracing::error!(error = %e, "the outbox relay failed");
        }
    });
    Ok((identity, db, background))
}

/// Opens the database, starts the outbox relay and the server, and registers
/// the instance. The returned task ends once the service has stopped after
/// `ctx.shutdown`.
pub async fn start(
    ctx: &ServiceContext,
    config: IdentityConfig,
    notifier: Arc<dyn Notifier>,
) -> anyhow::Result<Running> {
    let listen = config.listen;
    let advertise = config.advertise_url.clone();
    let password_policy = config.password.clone();
    let permits = Permits::for_service(ctx, NAME).await?;
    let changes = permits.listen(NAME, &ctx.bus, ctx.shutdown.clone()).await?;
    let (identity, db, relay_task) = open(ctx, config, notifier).await?;
    let (check, revocations) = TokenCheck::for_service(ctx, NAME).await?;

    let service = server::Service {
        name: NAME,
        db,
        http: http::routes(identity.clone(), check.clone()).merge(admin::routes(
            identity.clone(),
            permits,
            check,
        )),
        api: http::api_doc(&password_policy).merge_from(admin::AdminDoc::openapi()),
        grpc: grpc::server(identity),
        produces_events: true,
        listen,
        advertise_url: advertise,
        background: vec![relay_task, revocations, changes],
    };
    server::serve_service(ctx, service).await
}

/// Makes an account from the command line (`gatehouse admin create`): open
/// to registration or not, its `identity.user.registered` event waiting in
/// the outbox for the service's relay.
pub async fn create_account(
    ctx: &ServiceContext,
    config: IdentityConfig,
    email: &str,
    password: password::Password,
    display_name: &str,
) -> anyhow::Result<service::User> {
    let (db, hasher) = store_and_hasher(ctx, &config).await?;
    let config = IdentityConfig {
        registration_enabled: true,
        ..config
    };
    // The account's verification mail waits in the queue for the service.
    let identity = Identity::new(
        db,
        hasher,
        mail_queue(ctx)?,
        ctx.clock.clone(),
        outbox::Relay::idle(),
        Arc::new(config),
        device_key(ctx),
    );
    let registration = service::Registration {
        email: email.to_owned(),
        password,
        display_name: display_name.to_owned(),
    };
    Ok(identity.register(registration).await?)
}

/// The id of the account at `email`, for the command line.
pub async fn find_account(
    ctx: &ServiceContext,
    email: &str,
) -> anyhow::Result<Option<service::UserId>> {
    let db = open_db(&ctx.database, &ctx.data_dir).await?;
    let normalized = model::email_key(email);
    let row = db
        .run(move |c| Ok::<_, error::IdentityError>(store::by_email(c, &normalized)?))
        .await?;
    Ok(row
        .and_then(|r| uuid::Uuid::parse_str(&r.id).ok())
        .map(service::UserId))
}
