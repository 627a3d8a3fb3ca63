//! The connection type every service's store uses, over whichever backends
//! are compiled in, and the pool manager that opens the chosen one.
//!
//! The enum lives alone in this module because `MultiConnection` adds items
//! to the module it is derived in.

use diesel::Connection;
use diesel::RunQueryDsl;
use diesel::r2d2::{Error, ManageConnection};

/// A connection to the backend chosen at run time.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    #[cfg(feature = "postgres")]
    Pg(diesel::PgConnection),
    #[cfg(feature = "sqlite")]
    Sqlite(diesel::SqliteConnection),
}

/// Where a pool's connections go. Each variant is opened explicitly (never
/// through the enum's `establish`, which guesses from the URL).
#[derive(Debug, Clone)]
pub enum Target {
    #[cfg(feature = "sqlite")]
    Sqlite { path: String },
    #[cfg(feature = "postgres")]
    Postgres { url: String, schema: String },
}

/// Opens connections for r2d2 and prepares each one for its service: SQLite
/// gets foreign keys, a busy timeout and WAL (so concurrent writers wait
/// instead of failing); PostgreSQL gets the service's schema as its only
/// search path, so nothing lands in `public`.
#[derive(Debug, Clone)]
pub struct Manager {
    pub target: Target,
}

impl ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = Error;

    fn connect(&self) -> Result<DbConnection, Error> {
        match &self.target {
            #[cfg(feature = "sqlite")]
            Target::Sqlite { path } => {
                let mut conn =
                    diesel::SqliteConnection::establish(path).map_err(Error::ConnectionError)?;
                for pragma in [
                    "PRAGMA busy_timeout = 5000",
                    "PRAGMA journal_mode = WAL",
                    "PRAGMA synchronous = NORMAL",
                    "PRAGMA foreign_keys = ON",
                ] {
                    diesel::sql_query(pragma)
                        .execute(&mut conn)
                        .map_err(Error::QueryError)?;
                }
                Ok(DbConnection::Sqlite(conn))
            }
            #[cfg(feature = "postgres")]
            Target::Postgres { url, schema } => {
                let mut conn =
                    diesel::PgConnection::establish(url).map_err(Error::ConnectionError)?;
                diesel::sql_query(format!("SET search_path TO \"{schema}\""))
                    .execute(&mut conn)
                    .map_err(Error::QueryError)?;
                Ok(DbConnection::Pg(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), Error> {
        diesel::sql_query("SELECT 1")
            .execute(conn)
            .map(|_| ())
            .map_err(Error::QueryError)
    }

    fn has_broken(&self, _conn: &mut DbConnection) -> bool {
        false
    }
}
