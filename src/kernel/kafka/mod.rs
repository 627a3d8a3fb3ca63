//! The Kafka backend of the bus (`bus.backend = "kafka"`, the `kafka`
//! feature). Each producing service's relay publishes to its own topic
//! (`gatehouse.identity`, ...), each event keyed by its subject and sent to
//! the partition its subject hashes to, so one subject's events stay in
//! order; a relay's batch goes to each partition in as few produce
//! requests as keep under 8 KiB (see [`records`]).
//! Topics are created when missing, with `bus.kafka.partitions` and
//! `bus.kafka.replication`.
//!
//! There is no group coordinator: a consumer reads every partition its
//! process owns (`bus.kafka.share`) and keeps the offset it has handled in
//! its own database, in the same transaction as the effects (see
//! [`super::offsets`]); a consumer that keeps nothing (a cache) starts at
//! the end of each partition. A lost broker is asked again with a growing
//! pause, by producers and consumers alike.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rskafka::BackoffConfig;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use tokio::sync::mpsc;

use super::bus::{BusError, Delivery, Envelope, EventBus, Lag, Published, Start};
use super::config::{ConfigError, KafkaConfig, Share};
use super::locks;
use super::metrics::Metrics;

mod read;
mod records;

use read::Follow;
use records::{partition_of, record, request_sizes};

/// Events a consumer's queue holds before its fetches wait.
const CONSUMER_QUEUE: usize = 1024;
/// How long the client keeps trying a request that failed, before the bus
/// says the broker is unavailable.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long one request may wait for its response (a fetch: on top of its own
/// wait) before its connection is given up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// `request`, or unavailable after [`ANSWER_TIMEOUT`] and `more`.
async fn responded<T>(
    more: Duration,
    request: impl std::future::Future<Output = Result<T, KafkaError>>,
) -> Result<Result<T, KafkaError>, BusError> {
    tokio::time::timeout(ANSWER_TIMEOUT + more, request)
        .await
        .map_err(|_| unavailable("the broker did not answer in time"))
}

/// The bus through a Kafka broker.
pub struct KafkaBus {
    shared: Arc<Shared>,
}

struct Shared {
    config: KafkaConfig,
    share: Share,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    /// By topic and partition, once connected.
    partitions: tokio::sync::Mutex<HashMap<(String, i32), Arc<PartitionClient>>>,
    /// How many partitions each known topic has.
    topics: Mutex<HashMap<String, i32>>,
    lag: Lag,
}

impl KafkaBus {
    pub fn new(config: KafkaConfig, metrics: Metrics) -> Result<KafkaBus, ConfigError> {
        if config.brokers.is_empty() {
            return Err(ConfigError("bus.kafka.brokers is empty".into()));
        }
        if config.partitions < 1 || config.replication < 1 {
            return Err(ConfigError(
                "bus.kafka.partitions and bus.kafka.replication must be at least 1".into(),
            ));
        }
        let share = Share::parse(&config.share)?;
        Ok(KafkaBus {
            shared: Arc::new(Shared {
                config,
                share,
                client: tokio::sync::Mutex::default(),
                partitions: tokio::sync::Mutex::default(),
                topics: Mutex::default(),
                lag: Lag::new(metrics),
            }),
        })
    }
}

/// What the broker answered, as the bus says it.
fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("kafka: {e}"))
}

impl Shared {
    fn topic(&self, source: &str) -> String {
        format!("{}{source}", self.config.topic_prefix)
    }

    async fn client(&self) -> Result<Arc<Client>, BusError> {
        let mut client = self.client.lock().await;
        if let Some(client) = client.as_ref() {
            return Ok(client.clone());
        }
        let backoff = BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
            deadline: Some(REQUEST_DEADLINE),
        };
        let builder = ClientBuilder::new(self.config.brokers.clone())
            .client_id("gatehouse")
            .backoff_config(backoff);
        let built = responded(Duration::ZERO, builder.build())
            .await?
            .map_err(unavailable)?;
        let built = Arc::new(built);
        *client = Some(built.clone());
        Ok(built)
    }

    /// `source`'s topic, created when missing; how many partitions it has.
    async fn declare(&self, source: &str) -> Result<i32, BusError> {
        let topic = self.topic(source);
        if let Some(count) = locks::lock(&self.topics).get(&topic) {
            return Ok(*count);
        }
        let client = self.client().await?;
        let mut count = Self::partitions_of(&client, &topic).await?;
        if count == 0 {
            let controller = client.controller_client().map_err(unavailable)?;
            let timeout = i32::try_from(REQUEST_DEADLINE.as_millis()).unwrap_or(i32::MAX);
            let create = controller.create_topic(
                &topic,
                self.config.partitions,
                self.config.replication,
                timeout,
            );
            match responded(Duration::ZERO, create).await? {
                Ok(()) => tracing::info!(
                    topic,
                    partitions = self.config.partitions,
                    "created the topic"
                ),
                Err(KafkaError::ServerError {
                    protocol_error: ProtocolError::TopicAlreadyExists,
                    ..
                }) => {}
                Err(e) => return Err(unavailable(e)),
            }
            count = Self::partitions_of(&client, &topic).await?;
            if count == 0 {
                return Err(unavailable(format!("topic {topic} has no partitions yet")));
            }
        }
        locks::lock(&self.topics).insert(topic, count);
        Ok(count)
    }

    async fn partitions_of(client: &Client, topic: &str) -> Result<i32, BusError> {
        let topics = responded(Duration::ZERO, client.list_topics())
            .await?
            .map_err(unavailable)?;
        Ok(topics
            .iter()
            .find(|t| t.name == topic)
            .map_or(0, |t| i32::try_from(t.partitions.len()).unwrap_or(i32::MAX)))
    }

    /// A client of its own for `partition` of `topic`, on a connection of
    /// its own to the partition's leader. A broker answers one connection's
    /// requests in turn, so a consumer's fetch that waits for new events
    /// there would hold up a produce, or another consumer's fetch, sent
    /// behind it on the same connection.
    async fn connect(&self, topic: &str, partition: i32) -> Result<PartitionClient, BusError> {
        let connected = self.client().await?;
        responded(
            Duration::ZERO,
            connected.partition_client(topic, partition, UnknownTopicHandling::Error),
        )
        .await?
        .map_err(unavailable)
    }

    /// The producers' client for `partition` of `topic`.
    async fn partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, BusError> {
        let key = (topic.to_owned(), partition);
        if let Some(client) = self.partitions.lock().await.get(&key) {
            return Ok(client.clone());
        }
        let client = Arc::new(self.connect(topic, partition).await?);
        self.partitions.lock().await.insert(key, client.clone());
        Ok(client)
    }

    /// After a failure on `topic`: look it up again next time (the broker
    /// may have lost it, or its leader moved).
    async fn forget(&self, topic: &str) {
        locks::lock(&self.topics).remove(topic);
        self.partitions.lock().await.retain(|(t, _), _| t != topic);
    }

    async fn produce(
        &self,
        topic: &str,
        partition: i32,
        records: Vec<Record>,
    ) -> Result<(), BusError> {
        let client = self.partition(topic, partition).await?;
        responded(
            Duration::ZERO,
            client.produce(records, Compression::NoCompression),
        )
        .await?
        .map(|_| ())
        .map_err(unavailable)
    }
}

#[async_trait::async_trait]
impl EventBus for KafkaBus {
    async fn publish(&self, event: Envelope) -> Result<(), BusError> {
        let published = self.publish_all(vec![event]).await;
        published.failure.map_or(Ok(()), Err)
    }

    /// One produce request per partition the events' subjects hash to.
    async fn publish_all(&self, events: Vec<Envelope>) -> Published {
        let shared = &self.shared;
        let mut groups: BTreeMap<(String, i32), Vec<usize>> = BTreeMap::new();
        let mut published = Published::default();
        // Each source's topic is looked up once; events of a source whose
        // topic cannot be reached wait for the next pass.
        let mut counts: HashMap<&str, Option<i32>> = HashMap::new();
        for (index, event) in events.iter().enumerate() {
            let count = match counts.get(event.source.as_str()) {
                Some(count) => *count,
                None => {
                    let count = match shared.declare(&event.source).await {
                        Ok(count) => Some(count),
                        Err(e) => {
                            published.failure = Some(e);
                            None
                        }
                    };
                    counts.insert(&event.source, count);
                    count
                }
            };
            let Some(count) = count else { continue };
            let partition = partition_of(&event.subject, count);
            groups
                .entry((shared.topic(&event.source), partition))
                .or_default()
                .push(index);
        }
        for ((topic, partition), indexes) in groups {
            let mut records: Vec<Record> = indexes.iter().map(|i| record(&events[*i])).collect();
            let mut sent = 0;
            // A request that fails stops its partition's: the events after
            // it wait for the next pass, behind it.
            for size in request_sizes(&records) {
                let request = records.drain(..size).collect();
                match shared.produce(&topic, partition, request).await {
                    Ok(()) => {
                        published.done.extend(&indexes[sent..sent + size]);
                        sent += size;
                    }
                    Err(e) => {
                        shared.forget(&topic).await;
                        published.failure = Some(e);
                        break;
                    }
                }
            }
        }
        published.done.sort_unstable();
        published
    }

    async fn declare(&self, source: &str) -> Result<(), BusError> {
        self.shared.declare(source).await.map(|_| ())
    }

    async fn subscribe(
        &self,
        consumer: &str,
        sources: &[&str],
        start: Start,
    ) -> Result<mpsc::Receiver<Delivery>, BusError> {
        let (tx, rx) = mpsc::channel(CONSUMER_QUEUE);
        for source in sources {
            let follow = Follow {
                shared: self.shared.clone(),
                consumer: consumer.to_owned(),
                source: (*source).to_owned(),
                start: start.clone(),
                tx: tx.clone(),
            };
            tokio::spawn(follow.run());
        }
        Ok(rx)
    }

    fn crosses_processes(&self) -> bool {
        true
    }

    fn handled(&self, consumer: &str, deliveries: &[Delivery]) {
        for p in deliveries.iter().filter_map(|d| d.position.as_ref()) {
            self.shared
                .lag
                .update(consumer, &p.source, p.partition, None, Some(p.offset));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_owns_every_nth_partition() {
        let all = Share::parse("").unwrap();
        assert!((0..6).all(|p| all.owns(p)));
        let second = Share::parse("1/2").unwrap();
        assert_eq!(
            (0..6).filter(|p| second.owns(*p)).collect::<Vec<_>>(),
            [1, 3, 5]
        );
        for bad in ["2/2", "-1/2", "1/0", "x/2", "1"] {
            assert!(Share::parse(bad).is_err(), "{bad}");
        }
    }
}
