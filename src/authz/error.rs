//! The authz service's errors.

use crate::kernel::db::DbError;

use super::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// A permission, resource or change the model refuses.
    #[error(transparent)]
    Invalid(#[from] ModelError),
    /// The named role, group or binding does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A role or group of that name exists already.
    #[error("{0} exists already")]
    Exists(String),
    /// A check asked for a revision newer than any written.
    #[error("revision {asked} has not been written; the latest is {stored}")]
    RevisionAhead { asked: u64, stored: u64 },
    /// The stored policy cannot be read back: a row the model refuses.
    #[error("stored policy unreadable: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for AuthzError {
    fn from(e: diesel::result::Error) -> Self {
        AuthzError::Db(DbError::Query(e))
    }
}
