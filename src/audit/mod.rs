//! The audit service: an append-only log of what happened on the platform,
//! each entry chained to the one before by its hash, so that an entry
//! changed, removed or added is found (see `model.rs`).
//!
//! Rooms so far: `model.rs` (entries, their canonical form and hash, signed
//! checkpoints, the verifier), `keys.rs` (the key that signs checkpoints),
//! `store.rs` (appending to the chain, checkpoints, listing, verifying),
//! `schema.rs` (its tables), `error.rs` (the error type).

pub mod error;
pub mod keys;
pub mod model;
pub mod schema;
pub mod store;

use std::path::Path;

use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use crate::kernel::config::DatabaseConfig;
use crate::kernel::db::{Db, DbError, Migrations};

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
