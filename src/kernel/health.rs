//! Liveness and readiness. `/healthz` answers as long as the process can
//! serve at all; `/readyz` runs the service's probes (its database, ...) and
//! answers 503 naming the failing one, so a load balancer stops sending work
//! that would fail anyway.

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

/// One dependency a service needs to do its work.
#[async_trait]
pub trait Probe: Send + Sync {
    fn name(&self) -> &'static str;
    async fn check(&self) -> Result<(), String>;
}

/// A probe that takes longer than this is counted as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Default)]
pub struct Probes(pub Vec<Arc<dyn Probe>>);

/// Liveness: answers while the process serves.
pub const HEALTH_PATH: &str = "/healthz";
/// Readiness: answers 200 when every probe passes.
pub const READY_PATH: &str = "/readyz";

/// Routes [`HEALTH_PATH`] and [`READY_PATH`].
pub fn routes(probes: Probes) -> Router {
    Router::new()
        .route(HEALTH_PATH, get(|| async { Json(json!({"status": "ok"})) }))
        .route(READY_PATH, get(ready))
        .with_state(probes)
}

async fn ready(State(probes): State<Probes>) -> impl IntoResponse {
    let mut checks = serde_json::Map::new();
    let mut all_ok = true;
    for probe in &probes.0 {
        let outcome = match tokio::time::timeout(PROBE_TIMEOUT, probe.check()).await {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(e)) => e,
            Err(_) => "timed out".to_owned(),
        };
        all_ok &= outcome == "ok";
        checks.insert(probe.name().to_owned(), outcome.into());
    }
    let (status, word) = if all_ok {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    (status, Json(json!({"status": word, "checks": checks})))
}
