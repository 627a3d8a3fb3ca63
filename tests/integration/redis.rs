//! Redis (`it-redis`), against the server at `REDIS_URL` (default
//! `redis://127.0.0.1:6379`), each test under a key prefix of its own: the
//! gateway's rate limits counted there and shared by its replicas, and what
//! a limit becomes while Redis is away.

use std::time::Duration;

use gatehouse::kernel::config::RedisConfig;
use gatehouse::kernel::redis::Redis;
use gatehouse::middleware::ratelimit::redis::{Fallback, RedisLimits};
use gatehouse::middleware::ratelimit::{RateKey, SharedLimit, Verdict};

use crate::binary::{ServiceProcess, free_port};

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn config() -> RedisConfig {
    RedisConfig {
        url: url(),
        prefix: format!("test-{}:", uuid::Uuid::new_v4()),
        ..RedisConfig::default()
    }
}

fn address(n: u8) -> RateKey {
    RateKey::Address(std::net::IpAddr::from([10, 0, 0, n]))
}

/// Shared answers as kept, for ever but for a change.
const YES: gatehouse::middleware::permit::Kept = gatehouse::middleware::permit::Kept {
    allowed: true,
    until_ms: None,
};
const NO: gatehouse::middleware::permit::Kept = gatehouse::middleware::permit::Kept {
    allowed: false,
    until_ms: None,
};

#[tokio::test]
async fn the_shared_limit_is_gcra_counted_on_the_server() {
    let config = config();
    let redis = Redis::connect(&config).await.unwrap().unwrap();
    let limits = RedisLimits::new(redis.clone(), (1, 3), (0, 0), Fallback::Closed);
    for left in [2, 1, 0] {
        assert_eq!(
            limits.spend(address(1)).await.unwrap(),
            Some(Verdict::Allowed {
                limit: 3,
                remaining: left
            })
        );
    }
    let refused = limits.spend(address(1)).await.unwrap_err();
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry, 1);
    // Another address has its own allowance, and users are not limited here.
    assert!(limits.spend(address(2)).await.is_ok());
    let user = RateKey::User(uuid::Uuid::new_v4());
    assert_eq!(limits.spend(user).await.unwrap(), None);

    // A second limiter on the same server (another replica) spends from the
    // same allowance.
    let other = RedisLimits::new(
        Redis::connect(&config).await.unwrap().unwrap(),
        (1, 3),
        (0, 0),
        Fallback::Closed,
    );
    assert_eq!(other.spend(address(1)).await.unwrap_err().status(), 429);
    // One request a second comes back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(other.spend(address(1)).await.is_ok());
    assert_eq!(limits.spend(address(1)).await.unwrap_err().status(), 429);
}

#[tokio::test]
async fn with_redis_away_a_limit_falls_back_as_configured() {
    let away = RedisConfig {
        url: format!("redis://127.0.0.1:{}", free_port()),
        ..config()
    };
    let redis = Redis::connect(&away).await.unwrap().unwrap();
    let local = gatehouse::middleware::ratelimit::Limiter::new(1, 2, 100);
    let fallback = Fallback::Local {
        per_ip: local,
        per_user: None,
    };
    let limits = RedisLimits::new(redis.clone(), (1, 2), (0, 0), fallback);
    let outcomes = [
        limits.spend(address(1)).await.map(|_| 200),
        limits.spend(address(1)).await.map(|_| 200),
        limits.spend(address(1)).await.map(|_| 200),
    ];
    let statuses: Vec<u16> = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|r| r.status().as_u16()))
        .collect();
    assert_eq!(statuses, [200, 200, 429], "the local count");

    let open = RedisLimits::new(redis.clone(), (1, 2), (0, 0), Fallback::Open);
    for _ in 0..5 {
        assert_eq!(open.spend(address(1)).await.unwrap(), None);
    }
    let closed = RedisLimits::new(redis, (1, 2), (0, 0), Fallback::Closed);
    let refused = closed.spend(address(1)).await.unwrap_err();
    assert_eq!(refused.status(), 503);
    let body = axum::body::to_bytes(refused.into_body(), 10_000)
        .await
        .unwrap();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["code"], "rate_limit_unavailable", "{problem}");
}

/// A gateway process counting its limits in Redis under `prefix`: 1
/// request a second with bursts of `burst` per client address.
fn gateway(prefix: &str, burst: u32, data: &std::path::Path) -> ServiceProcess {
    let env = [
        ("GATEHOUSE_REDIS__URL", url()),
        ("GATEHOUSE_REDIS__PREFIX", prefix.to_owned()),
        ("GATEHOUSE_GATEWAY__RATE_LIMIT__BACKEND", "redis".to_owned()),
        (
            "GATEHOUSE_GATEWAY__RATE_LIMIT__PER_IP_PER_SEC",
            "1".to_owned(),
        ),
        (
            "GATEHOUSE_GATEWAY__RATE_LIMIT__PER_IP_BURST",
            burst.to_string(),
        ),
        ("GATEHOUSE_REGISTRY__BACKEND", "static".to_owned()),
    ];
    let mut process = ServiceProcess::spawn(
        env!("CARGO_BIN_EXE_gatehouse-gateway"),
        "gateway",
        free_port(),
        data,
        &env,
    );
    process.started();
    process
}

#[tokio::test]
async fn two_gateway_replicas_together_hold_a_client_to_its_limit() {
    let data = tempfile::tempdir().unwrap();
    let prefix = config().prefix;
    let replicas = [
        gateway(&prefix, 6, data.path()),
        gateway(&prefix, 6, data.path()),
    ];
    let http = reqwest::Client::new();
    // Unrouted paths: refused with 404, each taking one request of the
    // client address's allowance, like any anonymous traffic.
    let mut passed = [0, 0];
    let mut limited = [0, 0];
    for round in 0..12 {
        let replica = round % 2;
        let answer = http
            .get(format!("{}/no/such/route", replicas[replica].base))
            .send()
            .await
            .unwrap();
        match answer.status().as_u16() {
            404 => passed[replica] += 1,
            429 => {
                assert!(answer.headers().contains_key("retry-after"));
                limited[replica] += 1;
            }
            other => panic!("{other}"),
        }
    }
    // Six in a burst between them (a seventh if a second went by), where
    // each alone would let six through.
    let total = passed[0] + passed[1];
    assert!((6..=7).contains(&total), "{passed:?} passed");
    assert!(limited[0] > 0 && limited[1] > 0, "{limited:?} limited");
}

#[tokio::test]
async fn shared_authz_answers_are_voided_by_the_changes_after_them() {
    use gatehouse::middleware::permit::redis::RedisDecisions;
    use gatehouse::middleware::permit::{Kept, SharedDecisions};
    let config = config();
    let keep = Duration::from_secs(60);
    let here = RedisDecisions::new(
        Redis::connect(&config).await.unwrap().unwrap(),
        "gateway",
        [7; 32],
        keep,
    );
    let there = RedisDecisions::new(
        Redis::connect(&config).await.unwrap().unwrap(),
        "gateway",
        [7; 32],
        keep,
    );
    use gatehouse::middleware::ids::{ClientId, Subject, UserId};
    let (ann, bob) = (
        Subject::User(UserId::now_v7()),
        Subject::User(UserId::now_v7()),
    );
    // A client is asked about apart from a user, whatever its id.
    let client = Subject::Client(ClientId::from_uuid(ann.as_uuid()));
    let doc = Some("document:1");
    assert_eq!(there.get(ann, "document:read", doc).await, None);
    here.put(ann, "document:read", doc, 5, YES).await;
    here.put(bob, "document:read", doc, 5, NO).await;
    // Another replica reads what this one was told; other questions are not kept.
    assert_eq!(there.get(ann, "document:read", doc).await, Some(YES));
    assert_eq!(there.get(bob, "document:read", doc).await, Some(NO));
    assert_eq!(there.get(client, "document:read", doc).await, None);
    assert_eq!(there.get(ann, "document:read", None).await, None);
    assert_eq!(there.get(ann, "document:write", doc).await, None);

    // A change at revision 6 naming ann voids her answers only.
    there.forget(Some(&[ann.as_uuid()]), 6).await;
    assert_eq!(here.get(ann, "document:read", doc).await, None);
    assert_eq!(here.get(bob, "document:read", doc).await, Some(NO));
    // An answer given before the change, written after it, is not kept.
    here.put(ann, "document:read", doc, 5, YES).await;
    assert_eq!(there.get(ann, "document:read", doc).await, None);
    here.put(ann, "document:read", doc, 6, NO).await;
    assert_eq!(there.get(ann, "document:read", doc).await, Some(NO));
    // A floor never goes down.
    there.forget(Some(&[ann.as_uuid()]), 4).await;
    assert_eq!(there.get(ann, "document:read", doc).await, Some(NO));

    // An allowance that lapses by time is read with its end.
    let until = Kept {
        allowed: true,
        until_ms: Some(1_900_000_000_000),
    };
    here.put(bob, "document:edit", doc, 6, until).await;
    assert_eq!(there.get(bob, "document:edit", doc).await, Some(until));

    // A change that may alter anyone's answers voids them all.
    here.forget(None, 7).await;
    assert_eq!(there.get(ann, "document:read", doc).await, None);
    assert_eq!(there.get(bob, "document:read", doc).await, None);

    // Whoever writes to Redis without the service's key grants nothing.
    let forger = RedisDecisions::new(
        Redis::connect(&config).await.unwrap().unwrap(),
        "gateway",
        [8; 32],
        keep,
    );
    forger.put(bob, "document:write", doc, 9, YES).await;
    assert_eq!(forger.get(bob, "document:write", doc).await, Some(YES));
    assert_eq!(there.get(bob, "document:write", doc).await, None);
    // Nor does another service's answer count for this one.
    let identity = RedisDecisions::new(
        Redis::connect(&config).await.unwrap().unwrap(),
        "identity",
        [7; 32],
        keep,
    );
    identity.put(bob, "user:read", None, 9, YES).await;
    assert_eq!(there.get(bob, "user:read", None).await, None);
}

/// A TCP relay to the real Redis that the test can cut and mend: while cut,
/// it drops every connection it carries and every new one.
struct Relay {
    url: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    carried: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start() -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = url().trim_start_matches("redis://").to_owned();
        let relay = Relay {
            url: format!("redis://{}", listener.local_addr().unwrap()),
            cut: Default::default(),
            carried: Default::default(),
        };
        let (cut, carried) = (relay.cut.clone(), relay.carried.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                let target = target.clone();
                carried.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        relay
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for connection in self.carried.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn mend(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_replica_that_could_not_void_shared_answers_stops_reading_them() {
    use gatehouse::middleware::permit::SharedDecisions;
    use gatehouse::middleware::permit::redis::RedisDecisions;
    let relay = Relay::start().await;
    let direct = config();
    let relayed = RedisConfig {
        url: relay.url.clone(),
        ..direct.clone()
    };
    let keep = Duration::from_secs(3);
    let writer = RedisDecisions::new(
        Redis::connect(&direct).await.unwrap().unwrap(),
        "gateway",
        [7; 32],
        keep,
    );
    let replica = RedisDecisions::new(
        Redis::connect(&relayed).await.unwrap().unwrap(),
        "gateway",
        [7; 32],
        keep,
    );
    let ann =
        gatehouse::middleware::ids::Subject::User(gatehouse::middleware::ids::UserId::now_v7());
    writer.put(ann, "document:read", None, 5, YES).await;
    assert_eq!(replica.get(ann, "document:read", None).await, Some(YES));

    // The replica's link is down when a change arrives: the floor stays
    // where it was, so the voided answer is still in Redis.
    relay.cut();
    replica.forget(Some(&[ann.as_uuid()]), 6).await;
    relay.mend();
    assert_eq!(writer.get(ann, "document:read", None).await, Some(YES));
    // The replica reads nothing shared, even with its link back, until the
    // answers it could not void have expired.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        assert_eq!(replica.get(ann, "document:read", None).await, None);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    writer.put(ann, "document:read", None, 6, NO).await;
    assert_eq!(replica.get(ann, "document:read", None).await, Some(NO));
}
