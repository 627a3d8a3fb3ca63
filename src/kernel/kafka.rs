//! The Kafka backend of the bus (`bus.backend = "kafka"`, the `kafka`
//! feature). Each producing service's relay publishes to its own topic
//! (`gatehouse.identity`, ...), each event keyed by its subject and sent to
//! the partition its subject hashes to, so one subject's events stay in
//! order; a relay's batch goes to each partition in as few produce
//! requests as keep under 8 KiB (see [`REQUEST_RECORD_BYTES`]).
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

use prost::Message as _;
use rskafka::BackoffConfig;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::{Record, RecordAndOffset};
use tokio::sync::mpsc;

use super::bus::{BusError, Delivery, Envelope, EventBus, Lag, Position, Published, Start};
use super::config::{ConfigError, KafkaConfig, Share};
use super::locks;
use super::metrics::Metrics;

/// Events a consumer's queue holds before its fetches wait.
const CONSUMER_QUEUE: usize = 1024;
/// The longest pause before a failed fetch is tried again.
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// How far back a consumer looks for the start of the batch holding its
/// next offset (a relay's batch puts at most 100 records in a partition).
const MAX_BATCH_BACK: i64 = 1024;
/// The most bytes one fetch asks for.
const FETCH_BYTES: i32 = 1 << 20;
/// The most a produce request's records add up to. rskafka writes a
/// request's length and its body through an 8 KiB buffer and does not set
/// `TCP_NODELAY`: a larger body goes out in a second write, which Nagle's
/// algorithm holds until the broker acknowledges the first, and a Linux
/// broker delays that acknowledgement by up to 40 ms. A request that fits
/// the buffer, with room for its headers, goes out in one write and is
/// answered at once.
const REQUEST_RECORD_BYTES: usize = 7 * 1024;
/// About what a record, or a header of one, adds to a request besides its
/// bytes (lengths, offsets, timestamp).
const RECORD_OVERHEAD: usize = 24;
/// How long the client keeps trying a request that failed, before the bus
/// says the broker is unavailable.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long one request may wait for its answer (a fetch: on top of its own
/// wait) before its connection is given up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// `request`, or unavailable after [`ANSWER_TIMEOUT`] and `more`.
async fn answered<T>(
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

/// The partition of `count` that `subject`'s events go to: FNV-1a of the
/// subject, so every producer agrees without asking.
fn partition_of(subject: &str, count: i32) -> i32 {
    let hash = subject
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    let count = u64::try_from(count.max(1)).unwrap_or(1);
    i32::try_from(hash % count).unwrap_or(0)
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
        let built = answered(Duration::ZERO, builder.build())
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
            match answered(Duration::ZERO, create).await? {
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
        let topics = answered(Duration::ZERO, client.list_topics())
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
        answered(
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
        answered(
            Duration::ZERO,
            client.produce(records, Compression::NoCompression),
        )
        .await?
        .map(|_| ())
        .map_err(unavailable)
    }
}

/// `event` as a record: keyed by its subject, its type in a header.
fn record(event: &Envelope) -> Record {
    Record {
        key: Some(event.subject.as_bytes().to_vec()),
        value: Some(event.encode_to_vec()),
        headers: BTreeMap::from([("type".to_owned(), event.r#type.as_bytes().to_vec())]),
        timestamp: chrono::DateTime::from_timestamp_millis(event.occurred_at_unix_ms)
            .unwrap_or_default(),
    }
}

/// How many records each produce request of `records` carries, in order:
/// as many as add up to at most [`REQUEST_RECORD_BYTES`], and a larger
/// record alone.
fn request_sizes(records: &[Record]) -> Vec<usize> {
    let mut sizes = Vec::new();
    let (mut count, mut bytes) = (0, 0);
    for record in records {
        let len = RECORD_OVERHEAD
            + record.key.as_ref().map_or(0, Vec::len)
            + record.value.as_ref().map_or(0, Vec::len)
            + record
                .headers
                .iter()
                .map(|(name, value)| RECORD_OVERHEAD + name.len() + value.len())
                .sum::<usize>();
        if count > 0 && bytes + len > REQUEST_RECORD_BYTES {
            sizes.push(count);
            (count, bytes) = (0, 0);
        }
        count += 1;
        bytes += len;
    }
    if count > 0 {
        sizes.push(count);
    }
    sizes
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

/// One consumer's following of one source: finds its topic's partitions
/// (waiting for the broker as long as it takes), then reads each one this
/// process owns.
struct Follow {
    shared: Arc<Shared>,
    consumer: String,
    source: String,
    start: Start,
    tx: mpsc::Sender<Delivery>,
}

impl Follow {
    async fn run(self) {
        let mut pause = Duration::from_millis(100);
        let count = loop {
            match self.shared.declare(&self.source).await {
                Ok(count) => break count,
                Err(e) => {
                    tracing::warn!(consumer = %self.consumer, source = %self.source, error = %e, "cannot reach the topic yet; asking again");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.tx.closed() => return,
            }
            pause = (pause * 2).min(MAX_PAUSE);
        };
        for partition in (0..count).filter(|p| self.shared.share.owns(*p)) {
            // Stored: right after where it got to; none stored: the oldest
            // kept; from now on: the partition's end.
            let (next, from) = match &self.start {
                Start::Latest => (0, From::End),
                Start::After(stored) => stored
                    .iter()
                    .find(|p| p.source == self.source && p.partition == partition)
                    .map_or((0, From::Oldest), |p| (p.offset + 1, From::Stored)),
            };
            let read = Read {
                shared: self.shared.clone(),
                consumer: self.consumer.clone(),
                source: self.source.clone(),
                topic: self.shared.topic(&self.source),
                partition,
                next,
                from,
                caught_up: false,
                client: None,
                tx: self.tx.clone(),
            };
            tokio::spawn(read.run());
        }
    }
}

/// Where a partition's reading starts before its first fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Stored,
    Oldest,
    End,
}

/// One consumer's reading of one partition.
struct Read {
    shared: Arc<Shared>,
    consumer: String,
    source: String,
    topic: String,
    partition: i32,
    /// The next offset to fetch, once `from` is `Stored`.
    next: i64,
    from: From,
    /// Whether the last fetch reached the partition's end: only then does
    /// the next one wait at the broker for new events.
    caught_up: bool,
    /// Its own client, once connected; dropped after a failure.
    client: Option<Arc<PartitionClient>>,
    tx: mpsc::Sender<Delivery>,
}

impl Read {
    async fn run(mut self) {
        let mut pause = Duration::from_millis(100);
        let gone = self.tx.clone();
        loop {
            let outcome = tokio::select! {
                outcome = self.fetch() => outcome,
                () = gone.closed() => return,
            };
            match outcome {
                Ok(true) => return,
                Ok(false) => {
                    pause = Duration::from_millis(100);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(consumer = %self.consumer, topic = %self.topic, partition = self.partition, error = %e, "fetch failed; asking again");
                    self.client = None;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = gone.closed() => return,
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// One fetch, handed on; whether the consumer went away.
    async fn fetch(&mut self) -> Result<bool, BusError> {
        let client = match &self.client {
            Some(client) => client.clone(),
            None => {
                let client = Arc::new(self.shared.connect(&self.topic, self.partition).await?);
                self.client = Some(client.clone());
                client
            }
        };
        match self.from {
            From::Stored => {}
            From::Oldest => {
                self.next = Self::oldest(&client).await?;
            }
            From::End => {
                self.next = self.end(&client).await?;
            }
        }
        if self.from != From::Stored {
            self.from = From::Stored;
            self.shared
                .lag
                .start(&self.consumer, &self.source, self.partition, self.next - 1);
        }
        // Behind the end, what is there is asked for without waiting: a
        // broker may hold a fetch for its whole wait, whatever it has.
        let wait = if self.caught_up {
            self.shared.config.fetch_wait_ms.max(1)
        } else {
            0
        };
        let (mut records, high_watermark) = match self.fetch_from(&client, self.next, wait).await? {
            Ok(fetched) => fetched,
            Err(KafkaError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            }) => {
                self.out_of_range(&client).await?;
                return Ok(false);
            }
            Err(e) => return Err(unavailable(e)),
        };
        if records.is_empty() && high_watermark < self.next {
            // Some brokers answer an offset past the end with nothing
            // rather than with an error.
            self.out_of_range(&client).await?;
            return Ok(false);
        }
        if records.first().is_some_and(|r| r.offset > self.next) {
            records = self.batch_holding_next(&client, records).await?;
        }
        self.shared.lag.update(
            &self.consumer,
            &self.source,
            self.partition,
            Some(high_watermark - 1),
            None,
        );
        for record in records {
            self.next = record.offset + 1;
            let Some(event) = record
                .record
                .value
                .as_deref()
                .and_then(|value| Envelope::decode(value).ok())
            else {
                tracing::error!(consumer = %self.consumer, topic = %self.topic, partition = self.partition, offset = record.offset, "a record that is not an event; passed over");
                continue;
            };
            let delivery = Delivery {
                event,
                position: Some(Position {
                    source: self.source.clone(),
                    partition: self.partition,
                    offset: record.offset,
                }),
            };
            if self.tx.send(delivery).await.is_err() {
                return Ok(true);
            }
        }
        self.caught_up = self.next >= high_watermark;
        Ok(false)
    }

    async fn fetch_from(
        &self,
        client: &PartitionClient,
        offset: i64,
        wait: i32,
    ) -> Result<Result<(Vec<RecordAndOffset>, i64), KafkaError>, BusError> {
        let waits = Duration::from_millis(wait.unsigned_abs().into());
        answered(waits, client.fetch_records(offset, 1..FETCH_BYTES, wait)).await
    }

    /// A fetch from inside a batch of records (where a consumer stored its
    /// offset) may be answered from the next batch on, by some brokers: the
    /// records of `fetched` start after the next offset. Fetches from
    /// further back, until one answers the batch that holds it, give the
    /// records from the next offset on; a partition that holds nothing
    /// between them (it lost them) gives `fetched`.
    async fn batch_holding_next(
        &self,
        client: &PartitionClient,
        fetched: Vec<RecordAndOffset>,
    ) -> Result<Vec<RecordAndOffset>, BusError> {
        let oldest = Self::oldest(client).await?;
        let mut back = 1;
        loop {
            let from = (self.next - back).max(oldest);
            let Ok((mut records, _)) = self.fetch_from(client, from, 0).await? else {
                return Ok(fetched);
            };
            if records.first().is_some_and(|r| r.offset <= self.next) {
                records.retain(|r| r.offset >= self.next);
                return Ok(records);
            }
            if from == oldest || back >= MAX_BATCH_BACK {
                return Ok(fetched);
            }
            back *= 2;
        }
    }

    /// The offset of the oldest event the partition keeps.
    async fn oldest(client: &PartitionClient) -> Result<i64, BusError> {
        answered(Duration::ZERO, client.get_offset(OffsetAt::Earliest))
            .await?
            .map_err(unavailable)
    }

    /// The offset the next event of the partition will get.
    async fn end(&self, client: &PartitionClient) -> Result<i64, BusError> {
        // A fetch from the oldest kept offset answers the high watermark,
        // which is what the end is.
        let oldest = Self::oldest(client).await?;
        let (_, high_watermark) = answered(
            Duration::ZERO,
            client.fetch_records(oldest, 1..FETCH_BYTES, 0),
        )
        .await?
        .map_err(unavailable)?;
        Ok(high_watermark)
    }

    /// The next offset is not in the partition: events were removed before
    /// this consumer read them (retention), or the partition was emptied
    /// and started again (a broker that lost its data). Either way the
    /// reading goes on from the oldest event kept, and says so.
    async fn out_of_range(&mut self, client: &PartitionClient) -> Result<(), BusError> {
        let oldest = Self::oldest(client).await?;
        tracing::error!(
            consumer = %self.consumer,
            topic = %self.topic,
            partition = self.partition,
            wanted = self.next,
            oldest,
            "the partition no longer holds the next event this consumer wanted; reading on from the oldest it keeps"
        );
        self.next = oldest;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_always_goes_to_the_same_partition_and_subjects_spread() {
        assert_eq!(partition_of("user-1", 3), partition_of("user-1", 3));
        let used: std::collections::BTreeSet<i32> = (0..100)
            .map(|i| partition_of(&format!("user-{i}"), 3))
            .collect();
        assert_eq!(used, [0, 1, 2].into());
        assert_eq!(partition_of("anything", 1), 0);
    }

    fn event_of(value_bytes: usize) -> Envelope {
        Envelope {
            id: "e".into(),
            r#type: "identity.user.updated".into(),
            source: "identity".into(),
            subject: "user-1".into(),
            payload: vec![7; value_bytes],
            ..Envelope::default()
        }
    }

    #[test]
    fn a_batch_is_cut_into_requests_under_eight_kib_in_order() {
        // A relay pass: 100 events of a few hundred bytes.
        let records: Vec<Record> = (0..100).map(|_| record(&event_of(300))).collect();
        let sizes = request_sizes(&records);
        assert_eq!(sizes.iter().sum::<usize>(), 100);
        assert!(sizes.len() > 1, "{sizes:?}");
        let mut start = 0;
        for size in &sizes {
            let bytes: usize = records[start..start + size]
                .iter()
                .map(|r| r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len))
                .sum();
            assert!(bytes < 8 * 1024 - 1024, "a request of {bytes} bytes");
            start += size;
        }
        // An event larger than a request goes alone, between the others.
        let mixed = [
            record(&event_of(10)),
            record(&event_of(20_000)),
            record(&event_of(10)),
        ];
        assert_eq!(request_sizes(&mixed), [1, 1, 1]);
        let small = [record(&event_of(10)), record(&event_of(10))];
        assert_eq!(request_sizes(&small), [2]);
        assert!(request_sizes(&[]).is_empty());
    }

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
