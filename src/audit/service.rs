//! The audit service's behaviour: events recorded as entries, entries
//! read back and exported, the chain verified, its head signed now and
//! then, and old entries let go.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error::AuditError;
use super::events;
use super::keys::{AuditKey, EntryKey};
use super::model::{Entry, Finding, NewEntry};
use super::store::{self, Filter};
use crate::kernel::bus::Delivery;
use crate::kernel::clock::Clock;
use crate::kernel::db::Db;
use crate::kernel::metrics::Metrics;
use crate::kernel::offsets;

/// How often old entries are looked for, when some are to go.
const RETAIN_EVERY: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub struct Audit {
    db: Db,
    key: Arc<AuditKey>,
    /// Makes each entry's MAC.
    entry_key: EntryKey,
    /// Where the newest checkpoint is kept outside the database.
    witness: Arc<std::path::PathBuf>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
}

impl Audit {
    /// The service over `db`, signing with `key`, keeping its witness at
    /// `witness` (see `witness.rs`).
    pub fn new(
        db: Db,
        key: AuditKey,
        witness: std::path::PathBuf,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
    ) -> Result<Audit, AuditError> {
        Ok(Audit {
            db,
            entry_key: key.entry_key(),
            key: Arc::new(key),
            witness: Arc::new(witness),
            clock,
            metrics,
        })
    }

    /// Brings a log an older version wrote under today's rules, once (see
    /// `store::upgrade`), and starts the witness.
    pub async fn prepare(&self) -> Result<(), AuditError> {
        let (key, at) = (self.key.clone(), self.clock.now());
        self.db
            .run(move |conn| store::upgrade(conn, &key, at))
            .await?;
        self.start_witness().await
    }

    /// Starts the witness from the newest checkpoint in the database when
    /// there is none yet (a first start, or one after an upgrade). A
    /// witness there is never replaced by an older checkpoint.
    async fn start_witness(&self) -> Result<(), AuditError> {
        if super::witness::read(&self.witness)?.is_some() {
            return Ok(());
        }
        let newest = self
            .db
            .run(|conn| Ok::<_, AuditError>(store::checkpoints(conn)?.pop()))
            .await?;
        if let Some(checkpoint) = newest {
            super::witness::write(&self.witness, &checkpoint)?;
        }
        Ok(())
    }

    /// Records `deliveries` in order, each event once, and moves
    /// `consumer` past them in the same transaction. Answers how many
    /// entries were appended.
    pub async fn record(
        &self,
        consumer: &'static str,
        deliveries: Vec<Delivery>,
    ) -> Result<usize, AuditError> {
        let entries: Vec<NewEntry> = deliveries.iter().map(|d| events::entry(&d.event)).collect();
        let key = self.entry_key.clone();
        let appended = self
            .db
            .run(move |conn| {
                offsets::with_effect(conn, consumer, &deliveries, |c| {
                    store::append(c, &entries, &key)
                })
            })
            .await?;
        Ok(self.counted(&appended))
    }

    /// Appends `entries` in order, each event once: the entries appended.
    pub async fn record_entries(&self, entries: Vec<NewEntry>) -> Result<Vec<Entry>, AuditError> {
        let key = self.entry_key.clone();
        let appended = self
            .db
            .run(move |conn| store::append(conn, &entries, &key))
            .await?;
        self.counted(&appended);
        Ok(appended)
    }

    /// The time by audit's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Counts `appended` in the metrics; how many there are.
    fn counted(&self, appended: &[Entry]) -> usize {
        let now = self.clock.now();
        for entry in appended {
            let lag = (now - entry.fields.at).to_std().unwrap_or_default();
            self.metrics
                .audit_ingest_lag_seconds
                .observe(lag.as_secs_f64());
        }
        self.metrics
            .audit_entries_total
            .inc_by(u64::try_from(appended.len()).unwrap_or_default());
        appended.len()
    }

    /// Up to `limit` entries `filter` lets through, after the entry
    /// numbered `after`.
    pub async fn list(
        &self,
        filter: Filter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Entry>, AuditError> {
        self.db
            .run(move |conn| store::list(conn, &filter, after, limit).map_err(AuditError::from))
            .await
    }

    /// How many entries hold, or the first that does not; the log is held
    /// to its witness as well.
    pub async fn verify(&self) -> Result<Result<u64, Finding>, AuditError> {
        let key = self.key.clone();
        let witness = super::witness::read(&self.witness)?;
        self.db
            .run(move |conn| store::verify(conn, &key, witness.as_ref()))
            .await
    }

    /// Signs the chain's head, when entries were added since the last
    /// checkpoint.
    pub async fn checkpoint(&self) -> Result<(), AuditError> {
        let (key, at) = (self.key.clone(), self.clock.now());
        let signed = self
            .db
            .run(move |conn| store::checkpoint(conn, &key, at))
            .await?;
        if let Some(c) = signed {
            super::witness::write(&self.witness, &c)?;
            tracing::debug!(seq = c.seq, "audit checkpoint signed");
        }
        Ok(())
    }

    /// Removes entries made before `before` up to the newest checkpoint
    /// among them.
    pub async fn retain(&self, before: DateTime<Utc>) -> Result<usize, AuditError> {
        let (key, at) = (self.key.clone(), self.clock.now());
        let removed = self
            .db
            .run(move |conn| store::retain(conn, before, &key, at))
            .await?;
        if removed > 0 {
            tracing::info!(removed, "old audit entries removed");
        }
        Ok(removed)
    }

    /// Signs the head every `every`, and once more at shutdown; with a
    /// retention, removes what has aged out of it every hour.
    pub fn upkeep(
        &self,
        every: Duration,
        retention: Option<chrono::Duration>,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let audit = self.clone();
        tokio::spawn(async move {
            let mut signing = tokio::time::interval(every);
            signing.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut retaining = tokio::time::interval(RETAIN_EVERY);
            loop {
                tokio::select! {
                    _ = signing.tick() => {
                        if let Err(e) = audit.checkpoint().await {
                            tracing::warn!(error = %e, "audit checkpoint failed; will retry");
                        }
                    }
                    _ = retaining.tick(), if retention.is_some() => {
                        let before = audit.clock.now() - retention.unwrap_or_default();
                        if let Err(e) = audit.retain(before).await {
                            tracing::warn!(error = %e, "audit retention failed; will retry");
                        }
                    }
                    () = shutdown.cancelled() => break,
                }
            }
            if let Err(e) = audit.checkpoint().await {
                tracing::warn!(error = %e, "audit checkpoint at shutdown failed");
            }
        })
    }
}
