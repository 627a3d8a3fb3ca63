//! The audit service's one error type.
//!
//! Policy: a database that cannot be reached is 503; anything else the
//! store meets is the platform's fault. What verification finds is not an
//! error: it is the answer.

use crate::kernel::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// The key could not sign (it is not an Ed25519 key).
    #[error("cannot sign a checkpoint: {0}")]
    Signing(String),
}

impl From<diesel::result::Error> for AuditError {
    fn from(e: diesel::result::Error) -> Self {
        AuditError::Db(DbError::Query(e))
    }
}
