//! The replicated deployment of the `it-cluster` profile: two gateways, two
//! auth, two identity, two authz and one audit, each its own process on
//! loopback, sharing one PostgreSQL database, the local Redis, a tansu
//! broker and an etcd server, every instance listed in etcd under a lease
//! of [`LEASE_SECS`]. It is started once for the run; every scenario of
//! `features/` runs against it, and the steps of `cluster.feature` kill,
//! stop and restart its parts while clients keep using it.
//!
//! `deployment.rs` starts, stops and restarts the parts; `load.rs` is the
//! clients that keep using it; `drills.rs` holds `cluster.feature`'s steps.
//! Here: how a scenario joins the deployment, and what a drill keeps.

mod deployment;
mod drills;
mod load;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub use deployment::Cluster;

use crate::Platform;
use load::{Load, Sent};

/// The services and how many instances of each, in the order they start.
const LAYOUT: [(&str, usize); 5] = [
    ("identity", 2),
    ("auth", 2),
    ("authz", 2),
    ("audit", 1),
    ("gateway", 2),
];
/// Every instance's etcd lease.
const LEASE_SECS: u64 = 2;
/// How many clients make the load, each from a loopback address of its
/// own (the gateways' per-address limits hold each to 20 requests a second).
const CLIENTS: usize = 8;
/// How long the clients go on before a part is taken down, how long it
/// stays down at least, and how long they go on once it is back.
const BEFORE: Duration = Duration::from_millis(1000);
const DOWN: Duration = Duration::from_millis(1000);
const AFTER: Duration = Duration::from_millis(1000);

static DEPLOYMENT: OnceLock<Arc<Cluster>> = OnceLock::new();

/// The deployment of this run.
fn deployment() -> Arc<Cluster> {
    DEPLOYMENT
        .get()
        .expect("the replicated deployment was started")
        .clone()
}

/// Puts a scenario on the deployment: it talks to every instance in turn.
pub fn join(world: &mut Platform) {
    let cluster = deployment();
    world.identity = cluster.bases("identity");
    world.auth = cluster.bases("auth");
    world.gateway = cluster.bases("gateway");
    world.identity_logs = cluster.logs("identity");
    world.admin_cli = Some((cluster.data.clone(), cluster.database_env()));
}

/// What a `cluster.feature` scenario set going, took down and saw.
#[derive(Default)]
pub struct Drill {
    load: Option<Load>,
    /// The part taken down, when the signal went and when it was gone.
    down: Option<Down>,
    /// Whether that part runs again.
    restored: bool,
    /// What the killed instance had answered when it was killed.
    served_before: u64,
    /// What the clients sent, once they stopped.
    sent: Vec<Sent>,
    /// The users the clients signed up.
    signed_up: Vec<String>,
}

#[derive(Clone, Copy)]
enum Part {
    Instance(&'static str, usize),
    Broker,
}

#[derive(Clone, Copy)]
struct Down {
    part: Part,
    signalled: Instant,
    gone: Instant,
}

/// Starts again whatever a scenario took down and left down (a step
/// failed on the way), and stops its clients, so that the scenarios after
/// it find the whole deployment.
pub async fn tidy(world: &mut Platform) {
    drop(world.drill.load.take());
    if let Some(down) = world.drill.down
        && !world.drill.restored
    {
        world.drill.restored = true;
        match down.part {
            Part::Instance(service, n) => {
                let cluster = deployment();
                if !cluster.is_running(service, n) {
                    cluster.restart(service, n).await;
                }
            }
            Part::Broker => deployment().broker(true).await,
        }
    }
}
