//! The event bus: services publish what happened, others react. Delivery is
//! at least once and in order per subject; consumers deduplicate by event
//! id. Producers never publish directly from a request: they write outbox
//! rows in the same transaction as the change (see [`super::outbox`]).
//!
//! The in-process backend reaches only services inside the same process.
//! Queues are bounded: a slow consumer slows the publisher (the outbox relay)
//! rather than growing memory without limit. The outbox backend (see
//! [`super::stream`]) crosses processes: each consumer pulls a producer's
//! events from its outbox, and a consumer with a database stores how far
//! it got there, in the same transaction as the effects (see
//! [`super::offsets`]).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::locks;
use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::proto::events::v1::Envelope;

/// How many events may wait for one consumer before the publisher waits.
const CONSUMER_QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
}

/// Where an event stands in its source's stream: `offset` within one
/// `partition` of the `source` service's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub source: String,
    pub partition: i32,
    pub offset: i64,
}

/// An event as a consumer gets it, with its position when the bus keeps
/// one (the in-process bus does not).
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    pub event: Envelope,
    pub position: Option<Position>,
}

/// Where a subscription starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// With the events published from now on: for consumers that keep
    /// nothing (caches).
    Latest,
    /// Right after the positions a consumer stored; a source it stored
    /// none of is read from the oldest event kept.
    After(Vec<Position>),
}

#[async_trait]
pub trait EventBus: Send + Sync {
    /// Hands the event to every subscriber of its source.
    async fn publish(&self, event: Envelope) -> Result<(), BusError>;
    /// Receives the events of the given sources (producing services).
    async fn subscribe(
        &self,
        consumer: &str,
        sources: &[&str],
        start: Start,
    ) -> Result<mpsc::Receiver<Delivery>, BusError>;
    /// Whether events reach services in other processes.
    fn crosses_processes(&self) -> bool;
    /// Whether outbox relays give their rows positions for consumers to
    /// pull, rather than publishing them.
    fn sequences_outbox(&self) -> bool {
        false
    }

    /// Hears that `consumer` has handled `deliveries`, for its lag.
    fn handled(&self, _consumer: &str, _deliveries: &[Delivery]) {}

    /// Publishes `events` in order, as far as it can: answers which of them
    /// (by index) were published, and what stopped the rest. Events of one
    /// subject are published in order, and one that was not stops the
    /// subject's later ones.
    async fn publish_all(&self, events: Vec<Envelope>) -> Published {
        let mut published = Published::default();
        for (index, event) in events.into_iter().enumerate() {
            match self.publish(event).await {
                Ok(()) => published.done.push(index),
                Err(e) => {
                    published.failure = Some(e);
                    break;
                }
            }
        }
        published
    }

    /// Makes ready to carry `source`'s events (a topic of a broker).
    async fn declare(&self, _source: &str) -> Result<(), BusError> {
        Ok(())
    }
}

/// What [`EventBus::publish_all`] got done.
#[derive(Debug, Default)]
pub struct Published {
    /// The indexes of the events published.
    pub done: Vec<usize>,
    /// Why the others were not.
    pub failure: Option<BusError>,
}

/// By consumer, source and partition: the last position the source holds,
/// and the last one handled.
type Known = std::collections::BTreeMap<(String, String, i32), (i64, i64)>;

/// How far each consumer's sources have got and how far it has handled
/// them, by partition: its lag, in `gatehouse_bus_consumer_lag` (the sum of
/// a source's partitions).
pub struct Lag {
    metrics: super::metrics::Metrics,
    known: Mutex<Known>,
}

impl Lag {
    pub fn new(metrics: super::metrics::Metrics) -> Lag {
        Lag {
            metrics,
            known: Mutex::default(),
        }
    }

    /// `consumer` starts with a partition of `source` handled up to
    /// `handled`, unless it is under way already.
    pub fn start(&self, consumer: &str, source: &str, partition: i32, handled: i64) {
        let mut known = locks::lock(&self.known);
        known
            .entry((consumer.to_owned(), source.to_owned(), partition))
            .or_insert((handled, handled));
        self.report(&known, consumer, source);
    }

    /// Moves what is known of a partition on: the last position the source
    /// holds, the last one `consumer` handled.
    pub fn update(
        &self,
        consumer: &str,
        source: &str,
        partition: i32,
        head: Option<i64>,
        handled: Option<i64>,
    ) {
        let mut known = locks::lock(&self.known);
        let key = (consumer.to_owned(), source.to_owned(), partition);
        let Some(at) = known.get_mut(&key) else {
            return;
        };
        if let Some(head) = head {
            at.0 = at.0.max(head);
        }
        if let Some(handled) = handled {
            at.1 = at.1.max(handled);
        }
        self.report(&known, consumer, source);
    }

    fn report(&self, known: &Known, consumer: &str, source: &str) {
        let lag: i64 = known
            .iter()
            .filter(|((c, s, _), _)| c == consumer && s == source)
            .map(|(_, (head, handled))| (head - handled).max(0))
            .sum();
        self.metrics
            .bus_consumer_lag
            .with_label_values(&[consumer, source])
            .set(lag);
    }
}

struct Subscriber {
    consumer: String,
    sources: Vec<String>,
    tx: mpsc::Sender<Delivery>,
}

/// Delivers events to subscribers in the same process.
#[derive(Default)]
pub struct InProcessBus {
    subscribers: Mutex<Vec<Subscriber>>,
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, event: Envelope) -> Result<(), BusError> {
        let targets: Vec<(String, mpsc::Sender<Delivery>)> = {
            let subs = locks::lock(&self.subscribers);
            subs.iter()
                .filter(|s| s.sources.contains(&event.source))
                .map(|s| (s.consumer.clone(), s.tx.clone()))
                .collect()
        };
        for (consumer, tx) in targets {
            let delivery = Delivery {
                event: event.clone(),
                position: None,
            };
            if tx.send(delivery).await.is_err() {
                tracing::debug!(consumer, "event consumer went away; unsubscribing");
                let mut subs = locks::lock(&self.subscribers);
                subs.retain(|s| !s.tx.is_closed());
            }
        }
        Ok(())
    }

    /// Every start is from now on: nothing is kept to start from.
    async fn subscribe(
        &self,
        consumer: &str,
        sources: &[&str],
        _start: Start,
    ) -> Result<mpsc::Receiver<Delivery>, BusError> {
        let (tx, rx) = mpsc::channel(CONSUMER_QUEUE);
        let mut subs = locks::lock(&self.subscribers);
        subs.push(Subscriber {
            consumer: consumer.to_owned(),
            sources: sources.iter().map(|s| (*s).to_owned()).collect(),
            tx,
        });
        Ok(rx)
    }

    fn crosses_processes(&self) -> bool {
        false
    }
}

/// Why a consumer did not handle an event.
#[derive(Debug)]
pub enum Unhandled {
    /// Not now (a database away, say): the same event is tried again.
    Retry(String),
    /// Never: the event cannot be read. It is logged and passed over.
    Unreadable(String),
}

/// The longest wait between two tries of one event.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// Subscribes `consumer` to `sources` from now on and hands each event to
/// `handle`, in order, until shutdown. An event `handle` could not take now
/// is tried again, waiting longer each time (up to 10 s), before the next
/// one is looked at: events are handled at least once and never skipped,
/// except those that cannot be read at all.
pub async fn follow<H, F>(
    bus: &Arc<dyn EventBus>,
    consumer: &str,
    sources: &[&str],
    shutdown: CancellationToken,
    handle: H,
) -> Result<JoinHandle<()>, BusError>
where
    H: Fn(Envelope) -> F + Send + 'static,
    F: Future<Output = Result<(), Unhandled>> + Send,
{
    let batches = Batches {
        start: Start::Latest,
        most: 1,
    };
    follow_batches(bus, consumer, sources, batches, shutdown, move |batch| {
        // A batch of at most one, and never an empty one.
        let delivery = batch.into_iter().next().unwrap_or_default();
        handle(delivery.event)
    })
    .await
}

/// How [`follow_batches`] reads: from where, and how many at a time.
#[derive(Debug, Clone)]
pub struct Batches {
    pub start: Start,
    pub most: usize,
}

/// [`follow`], from `batches.start`, handing over up to `batches.most`
/// events at a time: those already waiting when `handle` is ready for more,
/// in order. A batch `handle` could not take is tried again whole, so
/// `handle` must take an event it has already taken as a no-op (by its id,
/// or by its position stored in the same transaction as its effect).
pub async fn follow_batches<H, F>(
    bus: &Arc<dyn EventBus>,
    consumer: &str,
    sources: &[&str],
    batches: Batches,
    shutdown: CancellationToken,
    handle: H,
) -> Result<JoinHandle<()>, BusError>
where
    H: Fn(Vec<Delivery>) -> F + Send + 'static,
    F: Future<Output = Result<(), Unhandled>> + Send,
{
    let mut events = bus.subscribe(consumer, sources, batches.start).await?;
    let (consumer, most) = (consumer.to_owned(), batches.most.max(1));
    let bus = bus.clone();
    Ok(tokio::spawn(async move {
        loop {
            let delivery = tokio::select! {
                e = events.recv() => e,
                () = shutdown.cancelled() => None,
            };
            let Some(delivery) = delivery else { break };
            let first = delivery.event.id.clone();
            let mut batch = vec![delivery];
            while batch.len() < most {
                match events.try_recv() {
                    Ok(delivery) => batch.push(delivery),
                    Err(_) => break,
                }
            }
            let mut delay = Duration::from_millis(100);
            loop {
                match handle(batch.clone()).await {
                    Ok(()) => {
                        bus.handled(&consumer, &batch);
                        break;
                    }
                    Err(Unhandled::Unreadable(e)) => {
                        tracing::error!(consumer, event_id = %first, error = %e, "event cannot be read; passed over");
                        bus.handled(&consumer, &batch);
                        break;
                    }
                    Err(Unhandled::Retry(e)) => {
                        tracing::warn!(consumer, event_id = %first, error = %e, "event not handled yet; retrying");
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {},
                    () = shutdown.cancelled() => return,
                }
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(source: &str, id: &str) -> Envelope {
        Envelope {
            id: id.into(),
            r#type: format!("{source}.thing.happened"),
            source: source.into(),
            subject: "s1".into(),
            occurred_at_unix_ms: 0,
            payload: vec![],
            ..Envelope::default()
        }
    }

    #[tokio::test]
    async fn subscribers_get_only_their_sources_in_order() {
        let bus = InProcessBus::default();
        let mut rx = bus
            .subscribe("audit", &["identity"], Start::Latest)
            .await
            .unwrap();
        bus.publish(event("identity", "1")).await.unwrap();
        bus.publish(event("auth", "x")).await.unwrap();
        bus.publish(event("identity", "2")).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().event.id, "1");
        assert_eq!(rx.recv().await.unwrap().event.id, "2");
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_dropped_consumer_does_not_block_publishing() {
        let bus = InProcessBus::default();
        drop(
            bus.subscribe("gone", &["identity"], Start::Latest)
                .await
                .unwrap(),
        );
        bus.publish(event("identity", "1")).await.unwrap();
        assert!(bus.subscribers.lock().unwrap().is_empty());
    }
}
