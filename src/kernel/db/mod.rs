//! The database layer services build on: one pool per service, on SQLite (a
//! file per service) or PostgreSQL (a schema per service), migrations run at
//! startup, and blocking Diesel work kept off the async worker threads.
//!
//! A store never holds a connection across an `.await`: it passes a closure to
//! [`Db::run`], which runs it on the blocking pool with a pooled connection.

mod connection;

use std::path::Path;
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use diesel::RunQueryDsl;
use diesel::r2d2::Pool;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};
use scheduled_thread_pool::ScheduledThreadPool;

pub use connection::{DbConnection, Manager, Target};

use super::config::{DatabaseBackend, DatabaseConfig};

/// Why the database could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had: the server is down or the pool exhausted.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database configuration: {0}")]
    Config(String),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("database task failed: {0}")]
    Task(String),
}

/// A service's database, written once: in a service's `mod.rs` (beside
/// its `NAME`), `service_db!(sqlite: "migrations/sqlite/auth", postgres:
/// "migrations/postgres/auth")` embeds its migrations for each compiled-in
/// backend and gives it `open_db`, which opens its SQLite file under the
/// data directory or its PostgreSQL schema with those migrations applied.
#[macro_export]
macro_rules! service_db {
    (sqlite: $sqlite:literal, postgres: $postgres:literal) => {
        static MIGRATIONS: $crate::kernel::db::Migrations = $crate::kernel::db::Migrations {
            #[cfg(feature = "sqlite")]
            sqlite: || {
                const EMBEDDED: diesel_migrations::EmbeddedMigrations =
                    diesel_migrations::embed_migrations!($sqlite);
                EMBEDDED
            },
            #[cfg(feature = "postgres")]
            postgres: || {
                const EMBEDDED: diesel_migrations::EmbeddedMigrations =
                    diesel_migrations::embed_migrations!($postgres);
                EMBEDDED
            },
        };

        /// Opens the service's database (its SQLite file under `data_dir`,
        /// or its PostgreSQL schema) with its migrations applied.
        pub async fn open_db(
            database: &$crate::kernel::config::DatabaseConfig,
            data_dir: &std::path::Path,
        ) -> Result<$crate::kernel::db::Db, $crate::kernel::db::DbError> {
            $crate::kernel::db::Db::open(database, data_dir, NAME, &MIGRATIONS).await
        }
    };
}

/// A service's embedded migrations, one set per compiled-in backend
/// (see [`service_db!`]).
pub struct Migrations {
    #[cfg(feature = "sqlite")]
    pub sqlite: fn() -> EmbeddedMigrations,
    #[cfg(feature = "postgres")]
    pub postgres: fn() -> EmbeddedMigrations,
}

/// A service's connection pool.
#[derive(Clone)]
pub struct Db {
    // Dropped before `_workers`, whose drop waits for the pool's threads.
    pool: Pool<Manager>,
    backend: DatabaseBackend,
    _workers: Arc<Workers>,
}

/// The threads on which the pool opens connections in the background (it
/// keeps one idle). When the last handle on the pool goes, dropping this
/// waits until each thread has finished the job it was on: a process may
/// end right after, and libpq torn down by the exit under a thread still
/// connecting crashes the process.
struct Workers(Arc<ScheduledThreadPool>);

impl Workers {
    const THREADS: usize = 3;
    const SETTLE: Duration = Duration::from_secs(5);

    fn new() -> Workers {
        Workers(Arc::new(
            ScheduledThreadPool::builder()
                .num_threads(Self::THREADS)
                .thread_name_pattern("db-connect-{}")
                .build(),
        ))
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // One waiting job per thread: all of them running at once means no
        // thread is still inside an earlier job.
        let (started, all_started) = mpsc::channel();
        let gate = Arc::new(Barrier::new(Self::THREADS));
        for _ in 0..Self::THREADS {
            let (started, gate) = (started.clone(), gate.clone());
            self.0.execute(move || {
                let _ = started.send(());
                gate.wait();
            });
        }
        let deadline = Instant::now() + Self::SETTLE;
        for _ in 0..Self::THREADS {
            let left = deadline.saturating_duration_since(Instant::now());
            if all_started.recv_timeout(left).is_err() {
                tracing::warn!("database connections still opening at shutdown");
                return;
            }
        }
    }
}

impl Db {
    /// Opens the pool for `service` and brings its schema up to date.
    ///
    /// `service` names the SQLite file (`<data_dir>/<service>.db`) or the
    /// PostgreSQL schema; it must be a plain lowercase identifier.
    pub async fn open(
        config: &DatabaseConfig,
        data_dir: &Path,
        service: &'static str,
        migrations: &'static Migrations,
    ) -> Result<Db, DbError> {
        if !service.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(DbError::Config(format!("bad service name {service:?}")));
        }
        let target = target(config, data_dir, service)?;
        let size = config.pool_size.max(1);
        let acquire = Duration::from_millis(config.acquire_timeout_ms);
        let backend = config.backend;
        let workers = Arc::new(Workers::new());
        tokio::task::spawn_blocking(move || {
            prepare(&target)?;
            let pool = Pool::builder()
                .max_size(size)
                .min_idle(Some(1))
                .thread_pool(workers.0.clone())
                .connection_timeout(acquire)
                .build(Manager { target })
                .map_err(|e| DbError::Unavailable(e.to_string()))?;
            let mut conn = pool
                .get()
                .map_err(|e| DbError::Unavailable(e.to_string()))?;
            migrate(&mut conn, service, migrations)?;
            Ok(Db {
                pool,
                backend,
                _workers: workers,
            })
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    pub fn backend(&self) -> DatabaseBackend {
        self.backend
    }

    /// Runs `work` with a pooled connection on the blocking thread pool, as
    /// part of the request being served (see [`super::origin`]).
    pub async fn run<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let pool = self.pool.clone();
        // The request's origin goes with its work, for the events it writes.
        let origin = super::telemetry::task_origin();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool
                .get()
                .map_err(|e| E::from(DbError::Unavailable(e.to_string())))?;
            super::origin::within(origin, || work(&mut conn))
        })
        .await
        .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }

    /// Checks that a connection can be had and answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.run(|conn| {
            diesel::sql_query("SELECT 1").execute(conn)?;
            Ok(())
        })
        .await
    }
}

#[async_trait::async_trait]
impl super::health::Probe for Db {
    fn name(&self) -> &'static str {
        "database"
    }

    async fn check(&self) -> Result<(), super::health::ProbeError> {
        Ok(self.ping().await?)
    }
}

fn target(config: &DatabaseConfig, data_dir: &Path, service: &str) -> Result<Target, DbError> {
    #[cfg(not(feature = "sqlite"))]
    let _ = data_dir;
    match config.backend {
        #[cfg(feature = "sqlite")]
        DatabaseBackend::Sqlite => {
            // The files hold password hashes and sealed keys: their
            // owner's alone, whatever the umask.
            super::keyfile::private_dir(data_dir)
                .map_err(|e| DbError::Config(format!("data_dir: {e}")))?;
            let path = data_dir.join(format!("{service}.db"));
            super::keyfile::private_file(&path).map_err(|e| DbError::Config(e.to_string()))?;
            Ok(Target::Sqlite {
                path: path.to_string_lossy().into_owned(),
            })
        }
        #[cfg(feature = "postgres")]
        DatabaseBackend::Postgres => {
            if config.url.is_empty() {
                return Err(DbError::Config(
                    "database.url must be set when database.backend = \"postgres\"".into(),
                ));
            }
            Ok(Target::Postgres {
                url: config.url.clone(),
                schema: service.to_owned(),
            })
        }
        #[allow(unreachable_patterns)]
        other => Err(DbError::Config(format!(
            "database.backend = {other:?} is not compiled into this binary; rebuild with the `{}` feature",
            format!("{other:?}").to_lowercase()
        ))),
    }
}

/// Work that must happen before the pool opens: the PostgreSQL schema has to
/// exist before any connection can make it its search path.
fn prepare(target: &Target) -> Result<(), DbError> {
    match target {
        #[cfg(feature = "sqlite")]
        Target::Sqlite { .. } => Ok(()),
        #[cfg(feature = "postgres")]
        Target::Postgres { url, schema } => {
            use diesel::Connection;
            let mut conn = diesel::PgConnection::establish(url)
                .map_err(|e| DbError::Unavailable(e.to_string()))?;
            // Concurrent `CREATE SCHEMA IF NOT EXISTS` can still collide on
            // PostgreSQL, so instances starting together take turns.
            diesel::sql_query("SELECT pg_advisory_lock(72616301)").execute(&mut conn)?;
            let created = diesel::sql_query(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .execute(&mut conn);
            diesel::sql_query("SELECT pg_advisory_unlock(72616301)").execute(&mut conn)?;
            created?;
            Ok(())
        }
    }
}

fn migrate(
    conn: &mut DbConnection,
    service: &str,
    migrations: &'static Migrations,
) -> Result<(), DbError> {
    let fail =
        |e: Box<dyn std::error::Error + Send + Sync>| DbError::Migration(format!("{service}: {e}"));
    let applied = match conn {
        #[cfg(feature = "sqlite")]
        DbConnection::Sqlite(c) => c
            .run_pending_migrations((migrations.sqlite)())
            .map_err(fail)?
            .len(),
        #[cfg(feature = "postgres")]
        DbConnection::Pg(c) => {
            diesel::sql_query("SELECT pg_advisory_lock(72616302)").execute(c)?;
            let result = c
                .run_pending_migrations((migrations.postgres)())
                .map(|v| v.len());
            diesel::sql_query("SELECT pg_advisory_unlock(72616302)").execute(c)?;
            result.map_err(fail)?
        }
    };
    if applied > 0 {
        tracing::info!(service, applied, "database migrations applied");
    }
    Ok(())
}
