//! Liveness and readiness. `/healthz` answers as long as the process can
//! serve at all; `/readyz` runs the service's probes (its database, ...) and
//! answers 503 naming the failing one, so a load balancer stops sending work
//! that would fail anyway. It also tells how many events each of the
//! service's bus consumers has yet to handle, by source (`lag`); a lag does
//! not make a service unready.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::StatusCode;
use serde_json::json;

use super::metrics::Metrics;

/// One dependency a service needs to do its work.
#[async_trait]
pub trait Probe: Send + Sync {
    fn name(&self) -> &'static str;
    async fn check(&self) -> Result<(), ProbeError>;
}

/// What a probe found wrong, in the probe's own error type.
pub type ProbeError = Box<dyn std::error::Error + Send + Sync>;

/// The first probe that did not pass, and what it found.
#[derive(Debug, thiserror::Error)]
#[error("{probe}: {outcome}")]
pub struct NotReady {
    pub probe: &'static str,
    pub outcome: String,
}

/// A probe that takes longer than this is counted as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Default)]
pub struct Probes(pub Vec<Arc<dyn Probe>>);

impl Probes {
    /// Runs every probe: its name and `"ok"` or what failed.
    pub async fn outcomes(&self) -> Vec<(&'static str, String)> {
        let mut outcomes = Vec::with_capacity(self.0.len());
        for probe in &self.0 {
            let outcome = match tokio::time::timeout(PROBE_TIMEOUT, probe.check()).await {
                Ok(Ok(())) => "ok".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_owned(),
            };
            outcomes.push((probe.name(), outcome));
        }
        outcomes
    }

    /// Whether the service is ready; `Err` names the first failing probe.
    pub async fn ready(&self) -> Result<(), NotReady> {
        match self
            .outcomes()
            .await
            .into_iter()
            .find(|(_, outcome)| outcome != "ok")
        {
            Some((probe, outcome)) => Err(NotReady { probe, outcome }),
            None => Ok(()),
        }
    }
}

/// Liveness: answers while the process serves.
pub const HEALTH_PATH: &str = "/healthz";
/// Readiness: answers 200 when every probe passes.
pub const READY_PATH: &str = "/readyz";

/// Routes [`HEALTH_PATH`] and [`READY_PATH`] for the service `name`.
pub fn routes(probes: Probes, metrics: Metrics, name: &'static str) -> Router {
    Router::new()
        .route(HEALTH_PATH, get(|| async { Json(json!({"status": "ok"})) }))
        .route(READY_PATH, get(ready))
        .with_state(Ready {
            probes,
            metrics,
            name,
        })
}

#[derive(Clone)]
struct Ready {
    probes: Probes,
    metrics: Metrics,
    name: &'static str,
}

/// The lag of `name`'s consumers (`name` and `name.*`), by consumer and
/// source, from `gatehouse_bus_consumer_lag`.
fn lag(metrics: &Metrics, name: &str) -> serde_json::Map<String, serde_json::Value> {
    use prometheus::core::Collector as _;
    let mut lag = serde_json::Map::new();
    for family in metrics.bus_consumer_lag.collect() {
        for metric in family.get_metric() {
            let label = |key: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == key)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            let consumer = label("consumer");
            let ours = consumer == name
                || consumer
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('.'));
            if !ours {
                continue;
            }
            let sources = lag
                .entry(consumer)
                .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
            if let serde_json::Value::Object(sources) = sources {
                // A gauge of whole events: the float holds it exactly.
                #[allow(clippy::cast_possible_truncation)]
                let events = metric.get_gauge().get_value() as i64;
                sources.insert(label("source"), events.into());
            }
        }
    }
    lag
}

async fn ready(
    State(Ready {
        probes,
        metrics,
        name,
    }): State<Ready>,
) -> impl IntoResponse {
    let mut checks = serde_json::Map::new();
    let mut all_ok = true;
    for (name, outcome) in probes.outcomes().await {
        all_ok &= outcome == "ok";
        checks.insert(name.to_owned(), outcome.into());
    }
    let (status, word) = if all_ok {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    let mut body = json!({"status": word, "checks": checks});
    let lag = lag(&metrics, name);
    if !lag.is_empty() {
        body["lag"] = lag.into();
    }
    (status, Json(body))
}
