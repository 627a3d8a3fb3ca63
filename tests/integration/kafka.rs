//! The Kafka backend of the bus against a real Kafka-protocol broker
//! (tansu, which `scripts/kafka.sh install` installs): what the backend
//! relies on the broker for. Each test starts a broker of its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::kernel::bus::{Delivery, Envelope, EventBus, Position, Start};
use gatehouse::kernel::kafka::KafkaBus;
use gatehouse::kernel::metrics::Metrics;
use tokio::sync::mpsc;

use crate::servers::Broker;

fn bus(broker: &Broker) -> (Arc<dyn EventBus>, Metrics) {
    let metrics = Metrics::new().unwrap();
    let bus = KafkaBus::new(broker.config(), metrics.clone()).unwrap();
    (Arc::new(bus), metrics)
}

fn event(n: usize, subject: &str) -> Envelope {
    Envelope {
        id: format!("event-{n}"),
        r#type: "identity.thing.happened".into(),
        source: "identity".into(),
        subject: subject.into(),
        occurred_at_unix_ms: 1_700_000_000_000,
        payload: n.to_string().into_bytes(),
        ..Envelope::default()
    }
}

/// `count` deliveries from `rx`, failing after 20 s.
async fn take(rx: &mut mpsc::Receiver<Delivery>, count: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    while got.len() < count {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
            Ok(Some(delivery)) => got.push(delivery),
            _ => panic!("got {} of {count} events", got.len()),
        }
    }
    got
}

/// Publishes `events` as a relay does: what the bus did not take is
/// handed to it again, until all is taken (failing after 30 s).
async fn publish_until_taken(bus: &Arc<dyn EventBus>, mut events: Vec<Envelope>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !events.is_empty() {
        let published = bus.publish_all(events.clone()).await;
        let done: std::collections::BTreeSet<usize> = published.done.into_iter().collect();
        events = events
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !done.contains(i))
            .map(|(_, e)| e)
            .collect();
        if let Some(failure) = published.failure {
            assert!(Instant::now() < deadline, "{failure}");
        }
    }
}

/// The payloads of each subject's deliveries, in the order they came.
fn by_subject(deliveries: &[Delivery]) -> BTreeMap<String, Vec<usize>> {
    let mut subjects: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for d in deliveries {
        let n = String::from_utf8(d.event.payload.clone())
            .unwrap()
            .parse()
            .unwrap();
        subjects.entry(d.event.subject.clone()).or_default().push(n);
    }
    subjects
}

#[tokio::test]
async fn events_go_through_the_broker_in_order_per_subject_and_resume_after_a_stored_position() {
    let broker = Broker::start();
    let (bus, _) = bus(&broker);
    bus.declare("identity").await.unwrap();
    // Three batches of ten events over five subjects: one produce request
    // per partition and batch, several records in each.
    let subjects = ["ann", "bob", "cy", "dee", "eve"];
    for batch in 0..3 {
        let events = (0..10)
            .map(|i| event(batch * 10 + i, subjects[i % subjects.len()]))
            .collect();
        let published = bus.publish_all(events).await;
        assert!(published.failure.is_none(), "{:?}", published.failure);
        assert_eq!(published.done, (0..10).collect::<Vec<_>>());
    }

    // A consumer that stored nothing reads every event kept, each subject's
    // in the order published.
    let mut all = bus
        .subscribe("first", &["identity"], Start::After(Vec::new()))
        .await
        .unwrap();
    let got = take(&mut all, 30).await;
    let expected: BTreeMap<String, Vec<usize>> = subjects
        .iter()
        .enumerate()
        .map(|(s, subject)| {
            let ns = (0..30).filter(|n| n % 10 % 5 == s).collect();
            ((*subject).to_owned(), ns)
        })
        .collect();
    assert_eq!(by_subject(&got), expected);
    let partitions: std::collections::BTreeSet<i32> = got
        .iter()
        .map(|d| d.position.as_ref().unwrap().partition)
        .collect();
    assert!(partitions.len() > 1, "subjects spread over partitions");

    // A consumer that stored a position in the middle of a batch (the
    // second record of each partition's first batch) gets exactly what
    // came after it.
    let mut stored: Vec<Position> = Vec::new();
    let mut seen: BTreeMap<i32, usize> = BTreeMap::new();
    for d in &got {
        let p = d.position.clone().unwrap();
        let count = seen.entry(p.partition).or_default();
        *count += 1;
        if *count == 2 {
            stored.push(p);
        }
    }
    let after = |d: &Delivery| {
        let p = d.position.as_ref().unwrap();
        stored
            .iter()
            .any(|s| s.partition == p.partition && p.offset > s.offset)
    };
    let rest: Vec<Delivery> = got.iter().filter(|d| after(d)).cloned().collect();
    let mut resumed = bus
        .subscribe("second", &["identity"], Start::After(stored.clone()))
        .await
        .unwrap();
    let again = take(&mut resumed, rest.len()).await;
    assert_eq!(by_subject(&again), by_subject(&rest));
    assert!(again.iter().all(after));
}

#[tokio::test]
async fn a_consumer_from_now_on_gets_only_what_is_published_after_it_started_and_its_lag_shows() {
    let broker = Broker::start();
    let (bus, metrics) = bus(&broker);
    let earlier = (0..6).map(|n| event(n, &format!("s{n}"))).collect();
    assert!(bus.publish_all(earlier).await.failure.is_none());

    let mut rx = bus
        .subscribe("cache", &["identity"], Start::Latest)
        .await
        .unwrap();
    // The consumer finds where each partition ends as it starts; that is
    // done once its lag is known for the source.
    let lag = || {
        metrics
            .bus_consumer_lag
            .with_label_values(&["cache", "identity"])
            .get()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let gauge = |m: &Metrics| {
        use prometheus::core::Collector as _;
        m.bus_consumer_lag.collect()[0].get_metric().len()
    };
    while gauge(&metrics) == 0 {
        assert!(Instant::now() < deadline, "the consumer never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = (6..12).map(|n| event(n, &format!("s{n}"))).collect();
    assert!(bus.publish_all(later).await.failure.is_none());
    let got = take(&mut rx, 6).await;
    let mut ns: Vec<usize> = by_subject(&got).into_values().flatten().collect();
    ns.sort_unstable();
    assert_eq!(ns, (6..12).collect::<Vec<_>>());

    // Received is not handled: the lag counts them until the consumer says.
    let deadline = Instant::now() + Duration::from_secs(10);
    while lag() != 6 {
        assert!(Instant::now() < deadline, "lag {}", lag());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bus.handled("cache", &got);
    assert_eq!(lag(), 0);
}

#[tokio::test]
async fn publishing_waits_out_a_stopped_broker_and_nothing_is_lost() {
    let broker = Broker::start();
    let (bus, _) = bus(&broker);
    let mut rx = bus
        .subscribe("audit", &["identity"], Start::After(Vec::new()))
        .await
        .unwrap();
    assert!(
        bus.publish_all(vec![event(0, "ann")])
            .await
            .failure
            .is_none()
    );
    take(&mut rx, 1).await;

    broker.pause();
    let publisher = bus.clone();
    let during = tokio::spawn(async move {
        publish_until_taken(&publisher, (1..5).map(|n| event(n, "ann")).collect()).await
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The stopped broker held the publisher: nothing was taken meanwhile.
    assert!(!during.is_finished(), "published to a stopped broker");
    assert!(rx.try_recv().is_err(), "delivered by a stopped broker");
    broker.resume();
    during.await.unwrap();
    let got = take(&mut rx, 4).await;
    assert_eq!(by_subject(&got)["ann"], vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn a_restarted_broker_is_reconnected_to_and_its_topic_made_again() {
    let mut broker = Broker::start();
    let (bus, _) = bus(&broker);
    let mut rx = bus
        .subscribe("audit", &["identity"], Start::After(Vec::new()))
        .await
        .unwrap();
    let before = (0..6).map(|n| event(n, "ann")).collect();
    assert!(bus.publish_all(before).await.failure.is_none());
    take(&mut rx, 6).await;

    // A broker that kept its topics in memory comes back empty: publishing
    // makes the topic again, and the consumer, whose next offset (6) is
    // past the new partition's end (2), reads it from its start.
    broker.start_again();
    publish_until_taken(&bus, (6..8).map(|n| event(n, "ann")).collect()).await;
    let got = take(&mut rx, 2).await;
    assert_eq!(by_subject(&got)["ann"], vec![6, 7]);
}
