//! The transactional outbox. A service never publishes an event from a
//! request: it inserts an outbox row in the same transaction as the state
//! change, so the event exists if and only if the change committed. A relay
//! task then publishes the rows in insertion order and marks them published.
//!
//! Delivery is at least once: a crash between publish and mark republishes
//! the row (with the same event id, so consumers drop the duplicate). A failed
//! publish stops the pass at that row, which keeps per-subject order.
//!
//! Every service's schema has its own `outbox` table of the shape below.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::bus::{Envelope, EventBus};
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
    }
}

/// Rows published per pass.
const BATCH: i64 = 100;
/// How often the relay looks even when nobody woke it.
const POLL: Duration = Duration::from_secs(1);
/// How long published rows are kept (for inspection) before they are pruned.
const KEEP_PUBLISHED: chrono::Duration = chrono::Duration::hours(24);
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
    let origin = super::origin::current();
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
struct Row {
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
/// more when `shutdown` is cancelled, then stops.
pub fn spawn(
    source: &'static str,
    db: Db,
    bus: Arc<dyn EventBus>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> (Relay, JoinHandle<()>) {
    let wake = Arc::new(Notify::new());
    let relay = Relay { wake: wake.clone() };
    let handle = tokio::spawn(async move {
        let mut worker = Worker {
            source,
            db,
            bus,
            clock,
            metrics,
            pruned_at: None,
        };
        loop {
            let stopping = tokio::select! {
                () = wake.notified() => false,
                () = tokio::time::sleep(POLL) => false,
                () = shutdown.cancelled() => true,
            };
            if let Err(e) = worker.pass().await {
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
    pruned_at: Option<std::time::Instant>,
}

impl Worker {
    /// Publishes pending rows until none are left or one fails.
    async fn pass(&mut self) -> Result<(), String> {
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
                .await
                .map_err(|e| e.to_string())?;
            self.metrics
                .outbox_pending
                .with_label_values(&[self.source])
                .set(rows.len() as i64);
            if rows.is_empty() {
                return self.prune().await;
            }
            let full = rows.len() as i64 == BATCH;
            let mut done = Vec::with_capacity(rows.len());
            let mut failure = None;
            for row in rows {
                let seq = row.seq;
                match self.bus.publish(self.envelope(row)).await {
                    Ok(()) => done.push(seq),
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            }
            self.mark(done).await?;
            if let Some(e) = failure {
                return Err(e);
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn envelope(&self, row: Row) -> Envelope {
        Envelope {
            id: row.event_id,
            r#type: row.event_type,
            source: self.source.to_owned(),
            subject: row.subject,
            occurred_at_unix_ms: row.occurred_at.and_utc().timestamp_millis(),
            payload: row.payload,
            actor: row.actor,
            client_ip: row.client_ip,
            request_id: row.request_id,
            trace_id: row.trace_id,
        }
    }

    async fn mark(&self, seqs: Vec<i64>) -> Result<(), String> {
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
            .await
            .map_err(|e| e.to_string())?;
        self.metrics
            .outbox_published_total
            .with_label_values(&[self.source])
            .inc_by(count);
        Ok(())
    }

    async fn prune(&mut self) -> Result<(), String> {
        if self.pruned_at.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
            return Ok(());
        }
        self.pruned_at = Some(std::time::Instant::now());
        let cutoff = (self.clock.now() - KEEP_PUBLISHED).naive_utc();
        self.db
            .run(move |conn| {
                diesel::delete(outbox::table.filter(outbox::published_at.lt(cutoff)))
                    .execute(conn)
                    .map_err(DbError::from)
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
