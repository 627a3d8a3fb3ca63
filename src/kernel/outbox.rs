//! The transactional outbox. A service never publishes an event from a
//! request: it inserts an outbox row in the same transaction as the state
//! change, so the event exists if and only if the change committed. A relay
//! task then publishes the rows in insertion order and marks them published.
//!
//! Delivery is at least once: a crash between publish and mark republishes
//! the row (with the same event id, so consumers drop the duplicate). A pass
//! hands the bus a batch of rows; a row the bus could not publish stops the
//! rows of its subject after it, which keeps per-subject order, and is
//! published first by the next pass.
//!
//! On the outbox bus (see [`super::stream`]) nothing is published: the relay
//! gives each row, in the order rows became visible, the next position, one
//! relay at a time however many instances share the outbox, and consumers
//! pull the rows by position.
//!
//! Every service's schema has its own `outbox` table of the shape below.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::bus::{BusError, Envelope, EventBus};
use super::clock::Clock;
use super::db::{Db, DbConnection, DbError};
use super::metrics::Metrics;

diesel::table! {
    outbox (seq) {
        seq -> BigInt,
        event_id -> Text,
        event_type -> Text,
        subject -> Text,
        payload -> Binary,
        occurred_at -> Timestamp,
        published_at -> Nullable<Timestamp>,
        actor -> Text,
        client_ip -> Text,
        request_id -> Text,
        trace_id -> Text,
        position -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// The last position given out (one row, id 1).
    outbox_head (id) {
        id -> Integer,
        position -> BigInt,
    }
}

/// Rows published per pass.
const BATCH: i64 = 100;
/// How often the relay looks even when nobody woke it.
const POLL: Duration = Duration::from_secs(1);
/// How often the relay prunes, at most.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// An event about to be written: its type, subject and encoded payload.
pub struct NewEvent {
    pub event_type: &'static str,
    pub subject: String,
    pub payload: Vec<u8>,
}

/// Writes `event` into the outbox, with the origin of the request that
/// caused it (see [`super::origin`]); call inside the transaction that
/// makes the change the event reports.
pub fn enqueue(conn: &mut DbConnection, event: &NewEvent, at: DateTime<Utc>) -> QueryResult<()> {
    let origin = super::telemetry::current_origin();
    diesel::insert_into(outbox::table)
        .values((
            outbox::actor.eq(&origin.actor),
            outbox::client_ip.eq(&origin.client_ip),
            outbox::request_id.eq(&origin.request_id),
            outbox::trace_id.eq(&origin.trace_id),
            outbox::event_id.eq(uuid::Uuid::now_v7().to_string()),
            outbox::event_type.eq(event.event_type),
            outbox::subject.eq(&event.subject),
            outbox::payload.eq(&event.payload),
            outbox::occurred_at.eq(at.naive_utc()),
        ))
        .execute(conn)?;
    Ok(())
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = outbox)]
pub struct Row {
    seq: i64,
    event_id: String,
    event_type: String,
    subject: String,
    payload: Vec<u8>,
    occurred_at: NaiveDateTime,
    actor: String,
    client_ip: String,
    request_id: String,
    trace_id: String,
    pub position: Option<i64>,
}

impl Row {
    /// The row as an event of `source`.
    pub fn envelope(self, source: &str) -> Envelope {
        Envelope {
            id: self.event_id,
            r#type: self.event_type,
            source: source.to_owned(),
            subject: self.subject,
            occurred_at_unix_ms: self.occurred_at.and_utc().timestamp_millis(),
            payload: self.payload,
            actor: self.actor,
            client_ip: self.client_ip,
            request_id: self.request_id,
            trace_id: self.trace_id,
        }
    }
}

/// Up to `limit` rows after `position`, in position order.
pub fn after(conn: &mut DbConnection, position: i64, limit: i64) -> QueryResult<Vec<Row>> {
    outbox::table
        .filter(outbox::position.gt(position))
        .order(outbox::position.asc())
        .limit(limit)
        .select(Row::as_select())
        .load(conn)
}

/// The last position given out.
pub fn head(conn: &mut DbConnection) -> QueryResult<i64> {
    outbox_head::table
        .filter(outbox_head::id.eq(1))
        .select(outbox_head::position)
        .first(conn)
}

/// Handle to a running relay.
#[derive(Clone)]
pub struct Relay {
    wake: Arc<Notify>,
}

impl Relay {
    /// A handle no relay listens to, for writers outside a running service
    /// (the command line): their rows wait in the outbox until the
    /// service's own relay publishes them.
    pub fn idle() -> Relay {
        Relay {
            wake: Arc::new(Notify::new()),
        }
    }

    /// Asks the relay to look now, e.g. right after a commit that wrote events.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Starts the relay for `source`'s outbox. It drains what is pending once
/// more when the context's shutdown is cancelled, then stops.
pub fn spawn(ctx: &super::ServiceContext, source: &'static str, db: Db) -> (Relay, JoinHandle<()>) {
    let wake = Arc::new(Notify::new());
    let relay = Relay { wake: wake.clone() };
    let shutdown = ctx.shutdown.clone();
    let mut worker = Worker {
        source,
        db,
        bus: ctx.bus.clone(),
        clock: ctx.clock.clone(),
        metrics: ctx.metrics.clone(),
        keep: chrono::Duration::hours(
            i64::try_from(ctx.bus_config.keep_hours).unwrap_or(i64::MAX / 3_600_000),
        ),
        pruned_at: None,
    };
    let handle = tokio::spawn(async move {
        if let Err(e) = worker.bus.declare(source).await {
            // Publishing declares it again until it can.
            tracing::warn!(service = source, error = %e, "cannot make the bus ready for this service's events yet");
        }
        loop {
            let stopping = tokio::select! {
                () = wake.notified() => false,
                () = tokio::time::sleep(POLL) => false,
                () = shutdown.cancelled() => true,
            };
            let pass = if worker.bus.sequences_outbox() {
                worker.sequence().await
            } else {
                worker.pass().await
            };
            if let Err(e) = pass {
                worker
                    .metrics
                    .outbox_publish_failures_total
                    .with_label_values(&[source])
                    .inc();
                tracing::warn!(service = source, error = %e, "outbox relay pass failed; will retry");
            }
            if stopping {
                break;
            }
        }
    });
    (relay, handle)
}

struct Worker {
    source: &'static str,
    db: Db,
    bus: Arc<dyn EventBus>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    /// How long published rows are kept before they are pruned.
    keep: chrono::Duration,
    pruned_at: Option<std::time::Instant>,
}

/// Gives up to a batch of pending rows the next positions; how many.
fn give_positions(conn: &mut DbConnection, now: NaiveDateTime) -> Result<u64, DbError> {
    // The write that takes the lock (SQLite's, or the head row's on
    // PostgreSQL): relays sharing the outbox give positions one at a time,
    // so a row given a position is visible before any given a later one.
    diesel::update(outbox_head::table.filter(outbox_head::id.eq(1)))
        .set(outbox_head::position.eq(outbox_head::position))
        .execute(conn)?;
    let mut position = head(conn)?;
    let pending: Vec<i64> = outbox::table
        .filter(outbox::position.is_null())
        .order(outbox::seq.asc())
        .limit(BATCH)
        .select(outbox::seq)
        .load(conn)?;
    for seq in &pending {
        position += 1;
        diesel::update(outbox::table.filter(outbox::seq.eq(seq)))
            .set((outbox::position.eq(position), outbox::published_at.eq(now)))
            .execute(conn)?;
    }
    diesel::update(outbox_head::table.filter(outbox_head::id.eq(1)))
        .set(outbox_head::position.eq(position))
        .execute(conn)?;
    Ok(pending.len() as u64)
}

/// A relay pass that stopped short; the rows stay for the next.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl Worker {
    /// Publishes pending rows until none are left or one fails.
    async fn pass(&mut self) -> Result<(), RelayError> {
        loop {
            let rows: Vec<Row> = self
                .db
                .run(|conn| {
                    outbox::table
                        .filter(outbox::published_at.is_null())
                        .order(outbox::seq.asc())
                        .limit(BATCH)
                        .select(Row::as_select())
                        .load(conn)
                        .map_err(DbError::from)
                })
                .await?;
            self.metrics
                .outbox_pending
                .with_label_values(&[self.source])
                .set(rows.len() as i64);
            if rows.is_empty() {
                return self.prune().await;
            }
            let full = rows.len() as i64 == BATCH;
            let seqs: Vec<i64> = rows.iter().map(|row| row.seq).collect();
            let events = rows
                .into_iter()
                .map(|row| row.envelope(self.source))
                .collect();
            let published = self.bus.publish_all(events).await;
            self.mark(published.done.iter().map(|i| seqs[*i]).collect())
                .await?;
            if let Some(e) = published.failure {
                return Err(e.into());
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Gives pending rows their positions, in order, until none are left.
    async fn sequence(&mut self) -> Result<(), RelayError> {
        loop {
            let now = self.clock.now().naive_utc();
            let given = self
                .db
                .run(move |conn| conn.transaction(|c| give_positions(c, now)))
                .await
                .map_err(RelayError::Db)?;
            self.metrics
                .outbox_published_total
                .with_label_values(&[self.source])
                .inc_by(given);
            if given < BATCH.unsigned_abs() {
                self.metrics
                    .outbox_pending
                    .with_label_values(&[self.source])
                    .set(0);
                return self.prune().await;
            }
        }
    }

    async fn mark(&self, seqs: Vec<i64>) -> Result<(), RelayError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let count = seqs.len() as u64;
        let now = self.clock.now().naive_utc();
        self.db
            .run(move |conn| {
                diesel::update(outbox::table.filter(outbox::seq.eq_any(seqs)))
                    .set(outbox::published_at.eq(now))
                    .execute(conn)
                    .map_err(DbError::from)
            })
            .await?;
        self.metrics
            .outbox_published_total
            .with_label_values(&[self.source])
            .inc_by(count);
        Ok(())
    }

    async fn prune(&mut self) -> Result<(), RelayError> {
        if self.pruned_at.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
            return Ok(());
        }
        self.pruned_at = Some(std::time::Instant::now());
        let cutoff = (self.clock.now() - self.keep).naive_utc();
        self.db
            .run(move |conn| {
                diesel::delete(outbox::table.filter(outbox::published_at.lt(cutoff)))
                    .execute(conn)
                    .map_err(DbError::from)
            })
            .await?;
        Ok(())
    }
}
