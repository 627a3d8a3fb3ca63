//! How a consumer reads: a [`Follow`] per source finds the topic's
//! partitions, then a [`Read`] per partition this process owns fetches
//! from where the consumer got to, on a connection of its own, and hands
//! the events on in offset order.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient};
use rskafka::record::RecordAndOffset;
use tokio::sync::mpsc;

use super::super::bus::{BusError, Delivery, Envelope, Position, Start};
use super::{Shared, responded, unavailable};

/// The longest pause before a failed fetch is tried again.
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// How far back a consumer looks for the start of the batch holding its
/// next offset (a relay's batch puts at most 100 records in a partition).
const MAX_BATCH_BACK: i64 = 1024;
/// The most bytes one fetch asks for.
const FETCH_BYTES: i32 = 1 << 20;
/// One consumer's following of one source: finds its topic's partitions
/// (waiting for the broker as long as it takes), then reads each one this
/// process owns.
pub(super) struct Follow {
    pub(super) shared: Arc<Shared>,
    pub(super) consumer: String,
    pub(super) source: String,
    pub(super) start: Start,
    pub(super) tx: mpsc::Sender<Delivery>,
}

impl Follow {
    pub(super) async fn run(self) {
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
        responded(waits, client.fetch_records(offset, 1..FETCH_BYTES, wait)).await
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
        responded(Duration::ZERO, client.get_offset(OffsetAt::Earliest))
            .await?
            .map_err(unavailable)
    }

    /// The offset the next event of the partition will get.
    async fn end(&self, client: &PartitionClient) -> Result<i64, BusError> {
        // A fetch from the oldest kept offset answers the high watermark,
        // which is what the end is.
        let oldest = Self::oldest(client).await?;
        let (_, high_watermark) = responded(
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
