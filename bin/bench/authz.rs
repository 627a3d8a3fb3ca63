//! `gatehouse-bench --authz`: checks per second over gRPC against a policy
//! of some size, and the latency of each, against the same server's gRPC
//! health check (the floor any call over that channel has), in one run.
//!
//! The policy, written straight into a scratch SQLite database: 10 000
//! users, 1 000 groups nested in 100 chains of 10 (each user in the
//! deepest group of two chains, so a user reaches 20 groups), 100 roles of
//! three permissions each, and 100 000 bindings (9 per user on resources,
//! 10 per group on types or everywhere). Two instances of authz serve it:
//! one keeping users' reaches between checks (`reach_cache_entries`), one
//! working them out for every check. Each question asks for a random user,
//! one of the permissions the roles hold, and a random resource, so some
//! are allowed and most are not.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use gatehouse::authz::schema::{bindings, memberships, role_permissions, roles, user_groups};
use gatehouse::kernel::rpc::Propagate;
use tonic::service::interceptor::InterceptedService;

/// A channel straight to the one authz instance, signed as the gateway signs.
type RpcChannel = InterceptedService<Channel, Propagate>;
use gatehouse::proto::authz::v1 as pb;
use gatehouse::proto::authz::v1::authz_client::AuthzClient;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use uuid::Uuid;

const USERS: usize = 10_000;
const CHAINS: usize = 100;
const CHAIN_DEPTH: usize = 10;
const ROLES: usize = 100;
const TYPES: usize = 20;
const USER_BINDINGS: usize = 9;
const GROUP_BINDINGS: usize = 10;
/// Ids a resource of one type takes.
const RESOURCES: usize = 1_000;

/// A small deterministic generator, so every run asks the same questions.
struct Draw(u64);

impl Draw {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below as u64) as usize
    }
}

/// The users, written with the rest of the policy into `db`.
fn seed(conn: &mut gatehouse::kernel::db::DbConnection) -> anyhow::Result<Vec<Uuid>> {
    let now = chrono::Utc::now().naive_utc();
    let mut draw = Draw(0x9e37_79b9_7f4a_7c15);
    let users: Vec<Uuid> = (0..USERS).map(|_| Uuid::now_v7()).collect();
    let groups: Vec<Uuid> = (0..CHAINS * CHAIN_DEPTH).map(|_| Uuid::now_v7()).collect();
    conn.transaction(|conn| {
        for r in 0..ROLES {
            let name = format!("role-{r}");
            diesel::insert_into(roles::table)
                .values((
                    roles::name.eq(&name),
                    roles::description.eq(""),
                    roles::builtin.eq(false),
                    roles::created_at.eq(now),
                    roles::updated_at.eq(now),
                ))
                .execute(conn)?;
            for action in ["read", "write", "delete"] {
                diesel::insert_into(role_permissions::table)
                    .values((
                        role_permissions::role.eq(&name),
                        role_permissions::permission.eq(format!("type{}:{action}", r % TYPES)),
                    ))
                    .execute(conn)?;
            }
        }
        for (i, group) in groups.iter().enumerate() {
            diesel::insert_into(user_groups::table)
                .values((
                    user_groups::id.eq(group.to_string()),
                    user_groups::name.eq(format!("group-{i}")),
                    user_groups::description.eq(""),
                    user_groups::created_at.eq(now),
                ))
                .execute(conn)?;
            // Each group holds the next one of its chain.
            if i % CHAIN_DEPTH != CHAIN_DEPTH - 1 {
                member(conn, *group, "group", groups[i + 1], now)?;
            }
            for _ in 0..GROUP_BINDINGS {
                let scope = match draw.next(4) {
                    0 => ("everywhere", String::new()),
                    _ => ("type", format!("type{}", draw.next(TYPES))),
                };
                bind(conn, "group", *group, draw.next(ROLES), scope, now)?;
            }
        }
        for user in &users {
            for _ in 0..2 {
                let deepest = draw.next(CHAINS) * CHAIN_DEPTH + CHAIN_DEPTH - 1;
                member(conn, groups[deepest], "user", *user, now)?;
            }
            for _ in 0..USER_BINDINGS {
                let role = draw.next(ROLES);
                let resource = format!("type{}:{}", role % TYPES, draw.next(RESOURCES));
                bind(conn, "user", *user, role, ("resource", resource), now)?;
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(users)
}

fn member(
    conn: &mut gatehouse::kernel::db::DbConnection,
    group: Uuid,
    kind: &str,
    id: Uuid,
    now: chrono::NaiveDateTime,
) -> QueryResult<usize> {
    // A user drawn into the same chain twice is in it once.
    let present: i64 = memberships::table
        .filter(memberships::group_id.eq(group.to_string()))
        .filter(memberships::member_kind.eq(kind))
        .filter(memberships::member_id.eq(id.to_string()))
        .count()
        .get_result(conn)?;
    if present > 0 {
        return Ok(0);
    }
    diesel::insert_into(memberships::table)
        .values((
            memberships::group_id.eq(group.to_string()),
            memberships::member_kind.eq(kind),
            memberships::member_id.eq(id.to_string()),
            memberships::created_at.eq(now),
        ))
        .execute(conn)
}

fn bind(
    conn: &mut gatehouse::kernel::db::DbConnection,
    kind: &str,
    subject: Uuid,
    role: usize,
    (scope_kind, scope): (&str, String),
    now: chrono::NaiveDateTime,
) -> QueryResult<usize> {
    diesel::insert_into(bindings::table)
        .values((
            bindings::id.eq(Uuid::now_v7().to_string()),
            bindings::subject_kind.eq(kind),
            bindings::subject_id.eq(subject.to_string()),
            bindings::role.eq(format!("role-{role}")),
            bindings::scope_kind.eq(scope_kind),
            bindings::scope.eq(scope),
            bindings::expires_at.eq(None::<chrono::NaiveDateTime>),
            bindings::created_at.eq(now),
        ))
        .execute(conn)
}

/// Calls per second and their 99th percentile latency.
struct Figure {
    rate: f64,
    p99: Duration,
}

/// `workers` tasks calling `call` one after another on one channel for
/// `span`.
async fn measure<F, Fut>(workers: usize, span: Duration, call: F) -> anyhow::Result<Figure>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0;
            while start.elapsed() < span {
                n += 1;
                let began = Instant::now();
                call(worker, n).await?;
                latencies.push(began.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let p99 = all
        .get(all.len().saturating_mul(99) / 100)
        .copied()
        .unwrap_or_default();
    Ok(Figure {
        rate: all.len() as f64 / elapsed,
        p99,
    })
}

/// Questions each worker asks in turn, made before the clock starts so
/// that the load tool's own work is no more than the health check's.
const QUESTIONS: usize = 1024;

async fn checks(
    channel: RpcChannel,
    users: Arc<Vec<Uuid>>,
    workers: usize,
    span: Duration,
) -> anyhow::Result<Figure> {
    let asked: Arc<Vec<Vec<pb::CheckRequest>>> = Arc::new(
        (0..workers)
            .map(|worker| {
                let mut draw = Draw(((worker as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d)) | 1);
                (0..QUESTIONS)
                    .map(|_| {
                        let user = users[draw.next(users.len())];
                        let kind = draw.next(TYPES);
                        let action = ["read", "write", "delete"][draw.next(3)];
                        pb::CheckRequest {
                            question: Some(pb::Question {
                                user_id: user.to_string(),
                                permission: format!("type{kind}:{action}"),
                                resource: format!("type{kind}:{}", draw.next(RESOURCES)),
                                ..Default::default()
                            }),
                            at_least_revision: 0,
                        }
                    })
                    .collect()
            })
            .collect(),
    );
    measure(workers, span, move |worker, n| {
        let mut client = AuthzClient::new(channel.clone());
        let request = asked[worker][n as usize % QUESTIONS].clone();
        async move {
            client.check(request).await?;
            Ok(())
        }
    })
    .await
}

async fn health(channel: RpcChannel, workers: usize, span: Duration) -> anyhow::Result<Figure> {
    measure(workers, span, move |_, _| {
        let mut client = HealthClient::new(channel.clone());
        async move {
            client.check(HealthCheckRequest::default()).await?;
            Ok(())
        }
    })
    .await
}

fn line(name: &str, figure: &Figure, floor: &Figure, target: f64, setup: &str) {
    let ratio = figure.rate / floor.rate;
    let fast = figure.p99 < Duration::from_millis(1);
    let verdict = if ratio >= target && fast {
        "ok"
    } else {
        "BELOW TARGET"
    };
    println!(
        "{name}: figure {:.0}/s p99 {:.3} ms  baseline {:.0}/s p99 {:.3} ms  ratio {ratio:.3}  (target >= {target} and p99 < 1 ms, {verdict}; {setup})",
        figure.rate,
        figure.p99.as_secs_f64() * 1e3,
        floor.rate,
        floor.p99.as_secs_f64() * 1e3,
    );
}

/// Seeds the policy, starts the two instances and prints both figures.
pub async fn run(seconds: u64, workers: usize) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let config = gatehouse::config::Config {
        data_dir: dir.clone(),
        ..Default::default()
    };
    let ctx = gatehouse::platform::context(&config)?;
    let db = gatehouse::authz::open_db(&ctx.database, &ctx.data_dir).await?;
    let seeding = Instant::now();
    let users = Arc::new(db.run(seed).await?);
    eprintln!(
        "authz: seeded {USERS} users, {} groups, {ROLES} roles, {} bindings in {:.1} s",
        CHAINS * CHAIN_DEPTH,
        USERS * USER_BINDINGS + CHAINS * CHAIN_DEPTH * GROUP_BINDINGS,
        seeding.elapsed().as_secs_f64()
    );
    let span = Duration::from_secs(seconds);
    let setup = format!("{workers} calls in flight on one channel, {seconds}s each");
    for (name, entries, target) in [
        ("authz_checks_per_sec (reaches kept)", 100_000, 0.8),
        (
            "authz_checks_per_sec (reaches worked out per check)",
            0,
            0.3,
        ),
    ] {
        let running = gatehouse::authz::start(
            &ctx,
            gatehouse::authz::AuthzConfig {
                listen: "127.0.0.1:0".parse()?,
                reach_cache_entries: entries,
                ..Default::default()
            },
        )
        .await?;
        let channel = Channel::from_shared(format!("http://{}", running.addr))?
            .connect()
            .await?;
        // As the gateway calls it: signed.
        let channel =
            gatehouse::kernel::rpc::signed(channel, ctx.keyring.caller("gateway"), "authz");
        // Warm up: the first calls open the connection and fill what is kept.
        checks(
            channel.clone(),
            users.clone(),
            workers,
            Duration::from_secs(1),
        )
        .await?;
        let floor = health(channel.clone(), workers, span).await?;
        let figure = checks(channel, users.clone(), workers, span).await?;
        line(name, &figure, &floor, target, &setup);
    }
    ctx.shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A fresh directory under the system's temporary one.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("gatehouse-bench-authz-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
