//! The event bus: services publish what happened, others react. Delivery is
//! at least once and in order per subject; consumers deduplicate by event
//! id. Producers never publish directly from a request: they write outbox
//! rows in the same transaction as the change (see [`super::outbox`]).
//!
//! The in-process backend reaches only services inside the same process.
//! Queues are bounded: a slow consumer slows the publisher (the outbox relay)
//! rather than growing memory without limit.

use std::sync::Mutex;

use super::locks;
use async_trait::async_trait;
use tokio::sync::mpsc;

pub use crate::proto::events::v1::Envelope;

/// How many events may wait for one consumer before the publisher waits.
const CONSUMER_QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
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
    ) -> Result<mpsc::Receiver<Envelope>, BusError>;
    /// Whether events reach services in other processes.
    fn crosses_processes(&self) -> bool;
}

struct Subscriber {
    consumer: String,
    sources: Vec<String>,
    tx: mpsc::Sender<Envelope>,
}

/// Delivers events to subscribers in the same process.
#[derive(Default)]
pub struct InProcessBus {
    subscribers: Mutex<Vec<Subscriber>>,
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, event: Envelope) -> Result<(), BusError> {
        let targets: Vec<(String, mpsc::Sender<Envelope>)> = {
            let subs = locks::lock(&self.subscribers);
            subs.iter()
                .filter(|s| s.sources.contains(&event.source))
                .map(|s| (s.consumer.clone(), s.tx.clone()))
                .collect()
        };
        for (consumer, tx) in targets {
            if tx.send(event.clone()).await.is_err() {
                tracing::debug!(consumer, "event consumer went away; unsubscribing");
                let mut subs = locks::lock(&self.subscribers);
                subs.retain(|s| !s.tx.is_closed());
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        consumer: &str,
        sources: &[&str],
    ) -> Result<mpsc::Receiver<Envelope>, BusError> {
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
        }
    }

    #[tokio::test]
    async fn subscribers_get_only_their_sources_in_order() {
        let bus = InProcessBus::default();
        let mut rx = bus.subscribe("audit", &["identity"]).await.unwrap();
        bus.publish(event("identity", "1")).await.unwrap();
        bus.publish(event("auth", "x")).await.unwrap();
        bus.publish(event("identity", "2")).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().id, "1");
        assert_eq!(rx.recv().await.unwrap().id, "2");
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_dropped_consumer_does_not_block_publishing() {
        let bus = InProcessBus::default();
        drop(bus.subscribe("gone", &["identity"]).await.unwrap());
        bus.publish(event("identity", "1")).await.unwrap();
        assert!(bus.subscribers.lock().unwrap().is_empty());
    }
}
