//! Failed logins for addresses that have no account, counted in memory so
//! that the lockout treats them as it treats real accounts (see
//! `credentials.rs`).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::kernel::locks;

/// Failed logins for addresses that have no account, counted and locked
/// like real ones so that the lockout does not tell which addresses exist.
/// Kept in memory, bounded, each entry for one lockout period.
#[derive(Clone)]
pub(super) struct Phantoms {
    counts: moka::sync::Cache<String, (i32, Option<DateTime<Utc>>)>,
    turn: Arc<std::sync::Mutex<()>>,
}

impl Phantoms {
    pub(super) fn new(lockout: std::time::Duration) -> Self {
        Self {
            counts: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(lockout.max(std::time::Duration::from_secs(1)))
                .build(),
            turn: Arc::default(),
        }
    }

    /// Counts a failure for `email`; answers the lock's end when it was
    /// already locked (the attempt is then not counted).
    pub(super) fn fail(
        &self,
        email: &str,
        now: DateTime<Utc>,
        max: i32,
        lock_until: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let _turn = locks::lock(&self.turn);
        let (mut failures, until) = self.counts.get(email).unwrap_or((0, None));
        match until {
            Some(until) if until > now => return Some(until),
            Some(_) => failures = 0,
            None => {}
        }
        failures += 1;
        let until = (failures >= max).then_some(lock_until);
        self.counts.insert(email.to_owned(), (failures, until));
        None
    }
}
