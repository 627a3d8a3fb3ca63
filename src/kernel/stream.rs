//! The broker-less bus (`bus.backend = "outbox"`): every producing service
//! serves its outbox over gRPC ([`server`], the `EventStream` service), and
//! a consumer pulls each source's events straight from there ([`OutboxBus`]),
//! finding an instance of the source through the registry.
//!
//! The outbox relay gives rows their positions (see [`super::outbox`]); a
//! consumer asks for the events after the last position it processed, then
//! gets each new one as it comes. Positions have no gaps, so a consumer that
//! finds one knows events were removed (`bus.keep_hours`) before it read
//! them, and says so. A consumer that loses its stream asks again, from
//! where it got to, with a growing pause.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::bus::{BusError, Delivery, EventBus, Lag, Position, Start};
use super::credentials::{CallingService, Keyring};
use super::db::{Db, DbError};
use super::metrics::Metrics;
use super::outbox;
use super::rpc::Clients;
use crate::proto::events::v1::event_stream_client::EventStreamClient;
use crate::proto::events::v1::event_stream_server::{EventStream, EventStreamServer};
use crate::proto::events::v1::{StreamedEvent, SubscribeRequest};

/// Rows read from the outbox at a time.
const PAGE: i64 = 200;
/// How often an idle stream looks for new rows.
const POLL: Duration = Duration::from_millis(50);
/// How often an idle stream says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Events a consumer's queue holds before its streams wait.
const CONSUMER_QUEUE: usize = 1024;
/// The longest pause before a lost stream is asked for again.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// `source`'s outbox as a gRPC stream, until `shutdown`.
pub fn server(
    source: &'static str,
    db: Db,
    shutdown: CancellationToken,
) -> EventStreamServer<Streams> {
    EventStreamServer::new(Streams {
        source,
        db,
        shutdown,
    })
}

/// Serves one service's outbox to its consumers.
pub struct Streams {
    source: &'static str,
    db: Db,
    shutdown: CancellationToken,
}

#[tonic::async_trait]
impl EventStream for Streams {
    type SubscribeStream = ReceiverStream<Result<StreamedEvent, tonic::Status>>;

    async fn subscribe(
        &self,
        request: tonic::Request<SubscribeRequest>,
    ) -> Result<tonic::Response<Self::SubscribeStream>, tonic::Status> {
        // A consumer is named for its service (`authz`, `audit.ingest`):
        // only that service's credential may stream as it.
        let caller = request.extensions().get::<CallingService>().cloned();
        let asked = request.into_inner();
        if let Some(CallingService(caller)) = caller
            && *caller != *consumer_service(&asked.consumer)
        {
            tracing::info!(source = self.source, consumer = %asked.consumer, caller = %caller, "refused a stream to a consumer of another service");
            return Err(tonic::Status::permission_denied(
                "a consumer streams with its own service's credential",
            ));
        }
        let (db, source, shutdown) = (self.db.clone(), self.source, self.shutdown.clone());
        let unavailable = |e: DbError| tonic::Status::unavailable(e.to_string());
        let after = if asked.from_latest {
            db.run(|c| outbox::head(c).map_err(DbError::from))
                .await
                .map_err(unavailable)?
        } else {
            asked.after.max(0)
        };
        tracing::debug!(source, consumer = %asked.consumer, after, "event stream opened");
        let (tx, rx) = mpsc::channel(PAGE as usize);
        tokio::spawn(async move {
            let mut after = after;
            let mut quiet_since: Option<tokio::time::Instant> = None;
            loop {
                // While the head stands still (an idle stream) there is
                // nothing after `after` to read.
                let page = db
                    .run(move |c| {
                        let head = outbox::head(c)?;
                        let rows = if head > after {
                            outbox::after(c, after, PAGE)?
                        } else {
                            Vec::new()
                        };
                        Ok::<_, DbError>((head, rows))
                    })
                    .await;
                let (head, rows) = match page {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(unavailable(e))).await;
                        return;
                    }
                };
                if rows.is_empty() {
                    if quiet_since.is_none_or(|at| at.elapsed() >= HEARTBEAT) {
                        let beat = StreamedEvent {
                            position: after,
                            event: None,
                            head,
                        };
                        if tx.send(Ok(beat)).await.is_err() {
                            return;
                        }
                        quiet_since = Some(tokio::time::Instant::now());
                    }
                    tokio::select! {
                        () = tokio::time::sleep(POLL) => continue,
                        () = tx.closed() => return,
                        () = shutdown.cancelled() => return,
                    }
                }
                quiet_since = None;
                for row in rows {
                    let position = row.position.unwrap_or(after);
                    after = position;
                    let event = StreamedEvent {
                        position,
                        event: Some(row.envelope(source)),
                        head,
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// The service a consumer belongs to: its name up to the first dot.
fn consumer_service(consumer: &str) -> &str {
    consumer.split('.').next().unwrap_or(consumer)
}

/// The consuming side: pulls each source's events from its outbox.
pub struct OutboxBus {
    clients: Clients,
    /// The keys a consumer's pulls are signed with: its own service's.
    keyring: Arc<Keyring>,
    progress: Arc<Lag>,
}

impl OutboxBus {
    pub fn new(clients: Clients, keyring: Arc<Keyring>, metrics: Metrics) -> OutboxBus {
        OutboxBus {
            clients,
            keyring,
            progress: Arc::new(Lag::new(metrics)),
        }
    }
}

#[async_trait::async_trait]
impl EventBus for OutboxBus {
    /// Never called: on this bus the relay gives positions instead.
    async fn publish(&self, _event: super::bus::Envelope) -> Result<(), BusError> {
        Err(BusError::Unavailable(
            "the outbox bus is pulled by consumers, not published to".into(),
        ))
    }

    async fn subscribe(
        &self,
        consumer: &str,
        sources: &[&str],
        start: Start,
    ) -> Result<mpsc::Receiver<Delivery>, BusError> {
        // The consumer's calls carry its own service's credential, which
        // the source checks against the consumer it names; a process
        // holding no key of that service signs with its first.
        let clients = self
            .keyring
            .caller(consumer_service(consumer))
            .map_or_else(|| self.clients.clone(), |own| self.clients.calling_as(own));
        let (tx, rx) = mpsc::channel(CONSUMER_QUEUE);
        for source in sources {
            let after = match &start {
                Start::Latest => None,
                Start::After(stored) => Some(
                    stored
                        .iter()
                        .find(|p| p.source == *source && p.partition == 0)
                        .map_or(0, |p| p.offset),
                ),
            };
            if let Some(after) = after {
                self.progress.start(consumer, source, 0, after);
            }
            let pull = Pull {
                clients: clients.clone(),
                consumer: consumer.to_owned(),
                source: (*source).to_owned(),
                after,
                tx: tx.clone(),
                progress: self.progress.clone(),
            };
            tokio::spawn(pull.run());
        }
        Ok(rx)
    }

    fn crosses_processes(&self) -> bool {
        true
    }

    fn sequences_outbox(&self) -> bool {
        true
    }

    fn handled(&self, consumer: &str, deliveries: &[Delivery]) {
        for position in deliveries.iter().filter_map(|d| d.position.as_ref()) {
            self.progress.update(
                consumer,
                &position.source,
                position.partition,
                None,
                Some(position.offset),
            );
        }
    }
}

/// One consumer's stream of one source.
struct Pull {
    clients: Clients,
    consumer: String,
    source: String,
    /// The last position received; none before the first response of a
    /// stream asked for from now on.
    after: Option<i64>,
    tx: mpsc::Sender<Delivery>,
    progress: Arc<Lag>,
}

/// Why a stream ended.
enum Ended {
    /// The consumer went away: stop.
    Consumer,
    /// The stream was lost or closed: ask again.
    Stream(String),
}

impl Pull {
    async fn run(mut self) {
        let mut pause = Duration::from_millis(100);
        let consumer_gone = self.tx.clone();
        loop {
            let before = self.after;
            let ended = tokio::select! {
                ended = self.read() => ended,
                () = consumer_gone.closed() => Ended::Consumer,
            };
            if self.after != before {
                // The stream served: the next loss is a new one.
                pause = Duration::from_millis(100);
            }
            match ended {
                Ended::Consumer => return,
                Ended::Stream(why) => {
                    tracing::debug!(consumer = %self.consumer, source = %self.source, why, "event stream lost; asking again");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = consumer_gone.closed() => return,
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// Reads one stream until it ends.
    async fn read(&mut self) -> Ended {
        let channel = match self.clients.channel(&self.source).await {
            Ok(channel) => channel,
            Err(e) => return Ended::Stream(e.to_string()),
        };
        let request = SubscribeRequest {
            consumer: self.consumer.clone(),
            after: self.after.unwrap_or(0),
            from_latest: self.after.is_none(),
        };
        let mut stream = match EventStreamClient::new(channel).subscribe(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Ended::Stream(status.message().to_owned()),
        };
        loop {
            let streamed = match stream.message().await {
                Ok(Some(streamed)) => streamed,
                Ok(None) => return Ended::Stream("closed by the source".into()),
                Err(status) => return Ended::Stream(status.message().to_owned()),
            };
            let Some(event) = streamed.event else {
                // A heartbeat: how far the source has read for us.
                if self.after.is_none() {
                    // Read from now on: nothing before counts as lag.
                    self.progress
                        .start(&self.consumer, &self.source, 0, streamed.position);
                }
                self.after = Some(self.after.unwrap_or(0).max(streamed.position));
                self.progress
                    .update(&self.consumer, &self.source, 0, Some(streamed.head), None);
                continue;
            };
            self.progress
                .update(&self.consumer, &self.source, 0, Some(streamed.head), None);
            if let Some(after) = self.after.filter(|a| *a > 0)
                && streamed.position > after + 1
            {
                tracing::error!(
                    consumer = %self.consumer,
                    source = %self.source,
                    missed = streamed.position - after - 1,
                    "events were removed from the source's outbox before this consumer read them (bus.keep_hours)"
                );
            }
            self.after = Some(streamed.position);
            let delivery = Delivery {
                event,
                position: Some(Position {
                    source: self.source.clone(),
                    partition: 0,
                    offset: streamed.position,
                }),
            };
            if self.tx.send(delivery).await.is_err() {
                return Ended::Consumer;
            }
        }
    }
}
