//! The clients that keep using the deployment while a drill takes its
//! parts down: each from a loopback address of its own, going to the next
//! gateway when its own refuses the connection, as behind a load balancer,
//! and keeping when each request started and ended and how it went.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Down, deployment};
use crate::support::PASSWORD;

/// One request a client sent: when it started and ended, what it was and
/// how it went (the status, or why there was none).
pub(super) struct Sent {
    pub(super) started: Instant,
    ended: Instant,
    what: &'static str,
    outcome: Result<u16, String>,
    expected: u16,
}

impl Sent {
    pub(super) fn failed(&self) -> bool {
        self.outcome != Ok(self.expected)
    }

    /// Whether it was under way when `down` was signalled.
    pub(super) fn in_flight(&self, down: &Down) -> bool {
        self.started < down.gone && self.ended >= down.signalled
    }
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.what, self.outcome)
    }
}

/// Clients going on in the background until stopped.
pub(super) struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Vec<Sent>>>,
    signed_up: Arc<Mutex<Vec<String>>>,
}

/// What each client does in a round.
#[derive(Clone, Copy)]
pub(super) enum Work {
    /// Signs in, reads its profile and the roles, and refreshes.
    Sessions,
    /// Signs a new person up.
    SignUps,
}

impl Load {
    /// `CLIENTS` clients, spread over `gateways`: each sends to its own
    /// gateway and, as a load balancer would, to the next one when its own
    /// refuses the connection.
    pub(super) async fn start(work: Work, gateways: Vec<String>) -> Load {
        let cluster = deployment();
        let crowd = cluster.crowd().await.to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        let signed_up = Arc::new(Mutex::new(Vec::new()));
        let clients = crowd
            .into_iter()
            .enumerate()
            .map(|(n, email)| {
                let mut gateways = gateways.clone();
                let first = n % gateways.len();
                gateways.rotate_left(first);
                let client = Client {
                    http: crate::client_from(crate::own_address()),
                    gateways,
                    sent: Vec::new(),
                };
                let (stop, signed_up) = (stop.clone(), signed_up.clone());
                tokio::spawn(client.run(work, email, stop, signed_up))
            })
            .collect();
        Load {
            stop,
            clients,
            signed_up,
        }
    }

    pub(super) async fn stop(mut self) -> (Vec<Sent>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut sent = Vec::new();
        for client in std::mem::take(&mut self.clients) {
            sent.extend(client.await.unwrap());
        }
        let signed_up = std::mem::take(&mut *self.signed_up.lock().unwrap());
        (sent, signed_up)
    }
}

/// Clients left going by a scenario that failed stop with it.
impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for client in &self.clients {
            client.abort();
        }
    }
}

struct Client {
    http: reqwest::Client,
    /// Its own gateway first.
    gateways: Vec<String>,
    sent: Vec<Sent>,
}

impl Client {
    async fn run(
        mut self,
        work: Work,
        email: String,
        stop: Arc<AtomicBool>,
        signed_up: Arc<Mutex<Vec<String>>>,
    ) -> Vec<Sent> {
        // Under the gateway's 20 requests a second per address.
        let every = match work {
            Work::Sessions => Duration::from_millis(250),
            Work::SignUps => Duration::from_millis(100),
        };
        while !stop.load(Ordering::Relaxed) {
            let round = tokio::time::Instant::now();
            match work {
                Work::Sessions => self.session(&email).await,
                Work::SignUps => {
                    let email = format!("{}@cluster.example.org", uuid::Uuid::new_v4().simple());
                    let body =
                        json!({"email": email, "password": PASSWORD, "display_name": "Someone"});
                    let http = self.http.clone();
                    let sign_up = |base: &str| http.post(format!("{base}/v1/users")).json(&body);
                    if let Some(user) = self.send("sign-up", 201, sign_up).await {
                        let id = user["id"].as_str().unwrap_or_default().to_owned();
                        signed_up.lock().unwrap().push(id);
                    }
                }
            }
            tokio::time::sleep_until(round + every).await;
        }
        self.sent
    }

    async fn session(&mut self, email: &str) {
        let http = self.http.clone();
        let body = json!({"email": email, "password": PASSWORD});
        let login = |base: &str| http.post(format!("{base}/v1/auth/login")).json(&body);
        let Some(pair) = self.send("sign-in", 200, login).await else {
            return;
        };
        let access = pair["access_token"].as_str().unwrap_or_default();
        let refresh = json!({"refresh_token": pair["refresh_token"]});
        let me = |base: &str| http.get(format!("{base}/v1/users/me")).bearer_auth(access);
        self.send("profile", 200, me).await;
        let roles = |base: &str| {
            http.get(format!("{base}/v1/authz/roles"))
                .bearer_auth(access)
        };
        self.send("roles", 200, roles).await;
        let renew = |base: &str| http.post(format!("{base}/v1/auth/refresh")).json(&refresh);
        self.send("refresh", 200, renew).await;
    }

    /// Sends the request `to` makes for a gateway's base URL, to the next
    /// gateway when one refuses the connection; keeps how it went, and
    /// answers its body when it got the `expected` status.
    async fn send(
        &mut self,
        what: &'static str,
        expected: u16,
        to: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Option<Value> {
        let started = Instant::now();
        let mut answer = Err((false, "no gateway".to_owned()));
        for base in &self.gateways {
            answer = to(base)
                .send()
                .await
                .map_err(|e| (e.is_connect(), e.to_string()));
            match &answer {
                Err((true, _)) => continue,
                _ => break,
            }
        }
        let (outcome, body) = match answer {
            Ok(r) => {
                let status = r.status().as_u16();
                (Ok(status), r.json::<Value>().await.ok())
            }
            Err((_, e)) => (Err(e), None),
        };
        let ok = outcome == Ok(expected);
        self.sent.push(Sent {
            started,
            ended: Instant::now(),
            what,
            outcome,
            expected,
        });
        if ok { body } else { None }
    }
}
