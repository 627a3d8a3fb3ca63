//! Prometheus metrics, declared here in one place with their help text.
//! Names carry their unit (`_seconds`, `_total`). Every server exposes them at
//! `/metrics`; in the all-in-one process the services share one registry and
//! are told apart by the `service` label.

use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The process's metrics. Cheap to clone: every field is a shared handle.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    pub outbox_published_total: IntCounterVec,
    pub outbox_publish_failures_total: IntCounterVec,
    pub outbox_pending: IntGaugeVec,
    pub password_hash_duration_seconds: HistogramVec,
    pub gateway_upstream_requests_total: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let http_requests_total = IntCounterVec::new(
            Opts::new(
                "gatehouse_http_requests_total",
                "HTTP and gRPC requests answered, by service, method, route and status.",
            ),
            &["service", "method", "route", "status"],
        )?;
        let http_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_http_request_duration_seconds",
                "Time from request received to response headers sent, by service, method and route.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["service", "method", "route"],
        )?;
        let outbox_published_total = IntCounterVec::new(
            Opts::new(
                "gatehouse_outbox_published_total",
                "Events the outbox relay handed to the bus, by producing service.",
            ),
            &["service"],
        )?;
        let outbox_publish_failures_total = IntCounterVec::new(
            Opts::new(
                "gatehouse_outbox_publish_failures_total",
                "Failed attempts to publish outbox events; they are retried.",
            ),
            &["service"],
        )?;
        let outbox_pending = IntGaugeVec::new(
            Opts::new(
                "gatehouse_outbox_pending",
                "Events written but not yet published, as of the relay's last pass.",
            ),
            &["service"],
        )?;
        let password_hash_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_password_hash_duration_seconds",
                "Time spent hashing or verifying one password, by operation.",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["operation"],
        )?;
        let gateway_upstream_requests_total = IntCounterVec::new(
            Opts::new(
                "gatehouse_gateway_upstream_requests_total",
                "Requests the gateway forwarded, by route prefix, upstream instance and status (or error).",
            ),
            &["route", "upstream", "status"],
        )?;
        registry.register(Box::new(gateway_upstream_requests_total.clone()))?;
        registry.register(Box::new(http_requests_total.clone()))?;
        registry.register(Box::new(http_request_duration_seconds.clone()))?;
        registry.register(Box::new(outbox_published_total.clone()))?;
        registry.register(Box::new(outbox_publish_failures_total.clone()))?;
        registry.register(Box::new(outbox_pending.clone()))?;
        registry.register(Box::new(password_hash_duration_seconds.clone()))?;
        Ok(Self {
            registry,
            http_requests_total,
            http_request_duration_seconds,
            outbox_published_total,
            outbox_publish_failures_total,
            outbox_pending,
            password_hash_duration_seconds,
            gateway_upstream_requests_total,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Put into a response's extensions by handlers that route by themselves,
/// so the request is counted under that route rather than a catch-all.
#[derive(Debug, Clone)]
pub struct RouteLabel(pub Arc<str>);

/// What the request metrics need: the metrics and the service they are
/// counted for (see `observe.rs`).
#[derive(Clone)]
pub struct Tracked {
    pub metrics: Metrics,
    pub service: &'static str,
}

/// Handler for `GET /metrics`.
pub async fn endpoint(State(t): State<Tracked>) -> impl IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        t.metrics.render(),
    )
}
