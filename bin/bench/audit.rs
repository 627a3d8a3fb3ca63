//! `gatehouse-bench --audit`: audit on PostgreSQL (`DATABASE_URL`, the local
//! server by default), each run in a database of its own, dropped after.
//!
//! - `audit_ingest_rows_per_sec`: identity events published on the bus to
//!   a running audit until every one is on the log, against a raw batched
//!   `INSERT` (500 rows a statement, a transaction each) of the same rows,
//!   hashes and all, into a table of the same shape in the same database,
//!   in the same run. Target: at least 0.5.
//! - `audit_lag_p99`: identity and audit in one process, profile changes
//!   made through identity at 1 000 a second; the time from each change to
//!   its audit row, as audit measures it (`gatehouse_audit_ingest_lag_seconds`,
//!   read at its bucket bound). Target: under 1 s.
//!
//! Both run first on the in-process bus, then through the Kafka broker at
//! `KAFKA_BROKERS` (127.0.0.1:9092 by default, which `scripts/bench.sh`
//! starts), on topics of each figure's own: the ingest figure then reads events
//! published before audit starts, the lag figure goes from identity's
//! outbox through the broker to audit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use gatehouse::audit::model::{Entry, GENESIS};
use gatehouse::audit::store::NewRow;
use gatehouse::kernel::bus::Envelope;
use gatehouse::proto::events::v1::UserEvent;
use prost::Message as _;
use uuid::Uuid;

/// Events the ingest figure records.
const EVENTS: usize = 20_000;
/// Rows a baseline statement carries.
const BASELINE_BATCH: usize = 500;
/// Profile changes a second for the lag figure.
const CHANGES_PER_SEC: u64 = 1_000;
/// Users the changes go round.
const USERS: usize = 200;

fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database on the server, dropped with it.
struct Scratch {
    name: String,
}

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let name = format!("gatehouse_bench_{}", Uuid::new_v4().simple());
        let mut conn = PgConnection::establish(&server_url())?;
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut conn)?;
        Ok(Scratch { name })
    }

    fn url(&self) -> String {
        let server = server_url();
        let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
        format!("{base}/{}", self.name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(mut conn) = PgConnection::establish(&server_url()) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn);
        }
    }
}

/// Which bus a figure's events travel on.
#[derive(Clone)]
enum Bus {
    InProcess,
    Kafka(gatehouse::kernel::config::KafkaConfig),
}

impl Bus {
    fn kafka() -> Bus {
        let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
        Bus::Kafka(gatehouse::kernel::config::KafkaConfig {
            brokers: brokers.split(',').map(str::to_owned).collect(),
            ..Default::default()
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Bus::InProcess => "the in-process bus",
            Bus::Kafka(_) => "Kafka (tansu)",
        }
    }
}

fn context(
    scratch: &Scratch,
    dir: &std::path::Path,
    bus: &Bus,
) -> anyhow::Result<gatehouse::kernel::ServiceContext> {
    let mut config = gatehouse::config::Config {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    config.database.backend = gatehouse::kernel::config::DatabaseBackend::Postgres;
    config.database.url = scratch.url();
    if let Bus::Kafka(kafka) = bus {
        config.bus.backend = gatehouse::kernel::config::BusBackend::Kafka;
        // Topics of this figure's own: none of another's events to read.
        config.bus.kafka = gatehouse::kernel::config::KafkaConfig {
            topic_prefix: format!("bench-{}.", Uuid::now_v7().simple()),
            ..kafka.clone()
        };
    }
    gatehouse::platform::context(&config)
}

/// An identity event like those a profile change makes.
fn event(n: usize) -> Envelope {
    let user = Uuid::now_v7().to_string();
    Envelope {
        id: Uuid::now_v7().to_string(),
        r#type: "identity.user.updated".into(),
        source: "identity".into(),
        subject: user.clone(),
        occurred_at_unix_ms: chrono::Utc::now().timestamp_millis(),
        payload: UserEvent {
            user_id: user,
            email: format!("bench-{n}@example.org"),
            display_name: format!("Bench {n}"),
            status: "active".into(),
            ..UserEvent::default()
        }
        .encode_to_vec(),
        actor: format!("user:{}", Uuid::now_v7()),
        client_ip: "203.0.113.9".into(),
        request_id: Uuid::new_v4().to_string(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
    }
}

async fn audit_config() -> anyhow::Result<gatehouse::audit::AuditConfig> {
    Ok(gatehouse::audit::AuditConfig {
        listen: "127.0.0.1:0".parse()?,
        checkpoint_every_secs: 3600,
        ..Default::default()
    })
}

/// Rows per second recorded from the bus, and the baseline. On the
/// in-process bus audit takes the events as they are published; from
/// Kafka it reads them once all are on the broker.
async fn ingest(dir: &std::path::Path, bus: &Bus) -> anyhow::Result<(f64, f64)> {
    let scratch = Scratch::new()?;
    let ctx = context(&scratch, dir, bus)?;
    let events: Vec<Envelope> = (0..EVENTS).map(event).collect();
    let (start, _audit) = match bus {
        Bus::InProcess => {
            let audit = gatehouse::audit::start(&ctx, audit_config().await?).await?;
            let start = Instant::now();
            for e in events.iter().cloned() {
                ctx.bus.publish(e).await?;
            }
            (start, audit)
        }
        Bus::Kafka(_) => {
            // As the relay publishes: 100 rows a pass.
            for batch in events.chunks(100) {
                let published = ctx.bus.publish_all(batch.to_vec()).await;
                if let Some(failure) = published.failure {
                    anyhow::bail!("publishing to the broker: {failure}");
                }
            }
            let start = Instant::now();
            (
                start,
                gatehouse::audit::start(&ctx, audit_config().await?).await?,
            )
        }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while ctx.metrics.audit_entries_total.get() < EVENTS as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "audit did not record every event"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let figure = EVENTS as f64 / start.elapsed().as_secs_f64();

    // The same rows, chained, into a plain table of the same shape.
    let mut prev = GENESIS.to_owned();
    let rows: Vec<Entry> = events
        .iter()
        .enumerate()
        .map(|(n, e)| {
            let entry = Entry::chain(
                n as i64 + 1,
                Uuid::now_v7(),
                gatehouse::audit::events::entry(e),
                &prev,
            );
            prev.clone_from(&entry.hash);
            entry
        })
        .collect();
    let url = scratch.url();
    let baseline = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        use gatehouse::audit::schema::entries;
        let mut conn = PgConnection::establish(&url)?;
        diesel::sql_query("CREATE SCHEMA raw").execute(&mut conn)?;
        diesel::sql_query("CREATE TABLE raw.entries (LIKE audit.entries INCLUDING ALL)")
            .execute(&mut conn)?;
        diesel::sql_query("SET search_path TO raw").execute(&mut conn)?;
        let start = Instant::now();
        for batch in rows.chunks(BASELINE_BATCH) {
            let values: Vec<NewRow<'_>> = batch.iter().map(NewRow::from).collect();
            conn.transaction(|c| {
                diesel::insert_into(entries::table)
                    .values(&values)
                    .execute(c)
            })?;
        }
        Ok(rows.len() as f64 / start.elapsed().as_secs_f64())
    })
    .await??;
    ctx.shutdown.cancel();
    Ok((figure, baseline))
}

/// The p99 of the time from a profile change to its audit row (the bound
/// of the bucket it falls in), and the changes made.
async fn lag(dir: &std::path::Path, seconds: u64, bus: &Bus) -> anyhow::Result<(f64, u64)> {
    let scratch = Scratch::new()?;
    let ctx = context(&scratch, dir, bus)?;
    let _audit = gatehouse::audit::start(&ctx, audit_config().await?).await?;
    let mut config = gatehouse::identity::IdentityConfig::default();
    config.scrypt.log_n = 4;
    config.scrypt.allow_weak_hashing_for_tests = true;
    let (identity, _db, _relay) = gatehouse::identity::open(
        &ctx,
        config,
        Arc::new(gatehouse::identity::mail::notifier::LogNotifier),
    )
    .await?;
    let mut users = Vec::with_capacity(USERS);
    for n in 0..USERS {
        let user = identity
            .register(gatehouse::identity::service::Registration {
                email: format!("lag-{n}@example.org"),
                password: gatehouse::identity::password::Password::new(
                    "benchmark password 123".into(),
                ),
                display_name: format!("Lag {n}"),
            })
            .await?;
        users.push(user.id);
    }
    // Wait for the registrations' entries, then count only the changes.
    while ctx.metrics.audit_entries_total.get() < USERS as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = ctx.metrics.audit_ingest_lag_seconds.get_sample_count();
    let counts_before: Vec<u64> = buckets(&ctx.metrics.audit_ingest_lag_seconds)
        .iter()
        .map(|b| b.1)
        .collect();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / CHANGES_PER_SEC));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let changes = CHANGES_PER_SEC * seconds;
    let mut running = tokio::task::JoinSet::new();
    for n in 0..changes {
        tick.tick().await;
        let (identity, user) = (identity.clone(), users[n as usize % USERS]);
        running.spawn(async move {
            identity
                .update_profile(user, Some(format!("Name {n}")), None)
                .await
        });
        while let Some(done) = running.try_join_next() {
            done??;
        }
    }
    while let Some(done) = running.join_next().await {
        done??;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctx.metrics.audit_ingest_lag_seconds.get_sample_count() < before + changes {
        anyhow::ensure!(Instant::now() < deadline, "audit did not catch up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = buckets(&ctx.metrics.audit_ingest_lag_seconds);
    let wanted = (changes as f64 * 0.99).ceil() as u64;
    let p99 = after
        .iter()
        .zip(&counts_before)
        .find(|((_, count), was)| count - *was >= wanted)
        .map_or(f64::INFINITY, |((bound, _), _)| *bound);
    ctx.shutdown.cancel();
    Ok((p99, changes))
}

/// A histogram's buckets: upper bound and cumulative count.
fn buckets(histogram: &prometheus::Histogram) -> Vec<(f64, u64)> {
    use prometheus::core::Collector as _;
    histogram
        .collect()
        .first()
        .and_then(|family| family.get_metric().first().cloned())
        .map(|metric| {
            metric
                .get_histogram()
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect()
        })
        .unwrap_or_default()
}

pub async fn run(seconds: u64) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("gatehouse-bench-audit-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    for bus in [Bus::InProcess, Bus::kafka()] {
        let name = bus.name();
        let (figure, baseline) = ingest(&dir.join("ingest"), &bus).await?;
        let ratio = figure / baseline;
        let verdict = if ratio >= 0.5 { "ok" } else { "BELOW TARGET" };
        println!(
            "audit_ingest_rows_per_sec: figure {figure:.0}/s  baseline {baseline:.0}/s  ratio {ratio:.3}  (target >= 0.5, {verdict}; {EVENTS} identity events from {name} into PostgreSQL, against raw INSERTs of the same rows, {BASELINE_BATCH} a statement)"
        );
        let (p99, changes) = lag(&dir.join("lag"), seconds, &bus).await?;
        let verdict = if p99 < 1.0 { "ok" } else { "BELOW TARGET" };
        println!(
            "audit_lag_p99: p99 <= {:.0} ms  ({changes} profile changes at {CHANGES_PER_SEC}/s, target < 1000 ms, {verdict}; identity and audit in one process on PostgreSQL, through {name})",
            p99 * 1e3
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
