//! Prometheus metrics, declared here in one place with their help text.
//! Names carry their unit (`_seconds`, `_total`). Each process serves them at
//! `/metrics` on its operator listener (`ops.rs`), never on a public port; in
//! the all-in-one process the services share one registry and are told apart
//! by the `service` label.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;

mod handles;

use handles::{
    Family, HANDLES, HANDLES_PER_THREAD, HandleTable, Handles, LabelRef, Pending, PlaceKey,
    THREAD_TABLES, TableKey, count_request,
};

use crate::kernel::locks::lock;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The process's metrics. Cheap to clone: every field is a shared handle.
#[derive(Clone)]
pub struct Metrics {
    /// Tells this set of metrics apart in the per-thread handle tables.
    id: u64,
    registry: Registry,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    pub outbox_published_total: IntCounterVec,
    pub outbox_publish_failures_total: IntCounterVec,
    pub outbox_pending: IntGaugeVec,
    pub password_hash_duration_seconds: HistogramVec,
    pub password_hash_refused_total: IntCounterVec,
    pub gateway_upstream_requests_total: IntCounterVec,
    pub audit_entries_total: IntCounter,
    pub bus_consumer_lag: IntGaugeVec,
    pub audit_ingest_lag_seconds: Histogram,
    pub mail_deliveries_total: IntCounterVec,
    pub mail_queued: IntGauge,
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
        let password_hash_refused_total = IntCounterVec::new(
            Opts::new(
                "gatehouse_password_hash_refused_total",
                "Password hashes refused as overloaded (503), by reason: queue_full or waited_too_long.",
            ),
            &["reason"],
        )?;
        let gateway_upstream_requests_total = IntCounterVec::new(
            Opts::new(
                "gatehouse_gateway_upstream_requests_total",
                "Requests the gateway forwarded, by route prefix, upstream instance and status (or error).",
            ),
            &["route", "upstream", "status"],
        )?;
        let audit_entries_total = IntCounter::new(
            "gatehouse_audit_entries_total",
            "Entries appended to the audit log.",
        )?;
        let audit_ingest_lag_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "gatehouse_audit_ingest_lag_seconds",
                "Time from an event happening to its audit entry being written.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        )?;
        let bus_consumer_lag = IntGaugeVec::new(
            Opts::new(
                "gatehouse_bus_consumer_lag",
                "Events a consumer has yet to handle of a source's stream (the outbox bus), by consumer and source.",
            ),
            &["consumer", "source"],
        )?;
        let mail_deliveries_total = IntCounterVec::new(
            Opts::new(
                "gatehouse_mail_deliveries_total",
                "Attempts to deliver identity's mail, by outcome: sent, failed (tried again later), \
                 refused (for good by the mail server), expired (its link ran out first) or \
                 unreadable (sealed under another key).",
            ),
            &["outcome"],
        )?;
        let mail_queued = IntGauge::new(
            "gatehouse_mail_queued",
            "Mails waiting in identity's queue, as of its last pass.",
        )?;
        registry.register(Box::new(mail_deliveries_total.clone()))?;
        registry.register(Box::new(mail_queued.clone()))?;
        registry.register(Box::new(bus_consumer_lag.clone()))?;
        registry.register(Box::new(audit_entries_total.clone()))?;
        registry.register(Box::new(audit_ingest_lag_seconds.clone()))?;
        registry.register(Box::new(gateway_upstream_requests_total.clone()))?;
        registry.register(Box::new(http_requests_total.clone()))?;
        registry.register(Box::new(http_request_duration_seconds.clone()))?;
        registry.register(Box::new(outbox_published_total.clone()))?;
        registry.register(Box::new(outbox_publish_failures_total.clone()))?;
        registry.register(Box::new(outbox_pending.clone()))?;
        registry.register(Box::new(password_hash_duration_seconds.clone()))?;
        registry.register(Box::new(password_hash_refused_total.clone()))?;
        Ok(Self {
            id: METRIC_SETS.fetch_add(1, Ordering::Relaxed),
            registry,
            http_requests_total,
            http_request_duration_seconds,
            outbox_published_total,
            outbox_publish_failures_total,
            outbox_pending,
            password_hash_duration_seconds,
            password_hash_refused_total,
            gateway_upstream_requests_total,
            audit_entries_total,
            bus_consumer_lag,
            audit_ingest_lag_seconds,
            mail_deliveries_total,
            mail_queued,
        })
    }

    /// Counts one answered request of `service` and the time it took.
    pub fn request_completed(
        &self,
        service: &'static str,
        method: &str,
        route: &str,
        status: &str,
        elapsed: Duration,
    ) {
        let labels = [service, method, route, status];
        let key = LabelRef {
            metrics: self.id,
            family: Family::Request,
            labels: &labels,
        };
        self.count_in(key, |handles| count_request(handles, elapsed));
    }

    /// [`Metrics::request_completed`] for labels that are all static text
    /// (`service`, `method`, `route`, `status`): this thread finds their
    /// handles by where the labels lie, without hashing or comparing text.
    pub fn request_completed_static(&self, labels: [&'static str; 4], elapsed: Duration) {
        let key = PlaceKey {
            metrics: self.id,
            family: Family::Request,
            places: labels.map(|l| (l.as_ptr() as usize, l.len())),
            labels,
        };
        self.count_in(key, |handles| count_request(handles, elapsed));
    }

    /// Counts one request the gateway sent to `upstream` for `route`, by
    /// the response's status or the error.
    pub fn upstream_responded(&self, route: &str, upstream: &str, status: &str) {
        let labels = [route, upstream, status];
        let key = LabelRef {
            metrics: self.id,
            family: Family::Upstream,
            labels: &labels,
        };
        self.count_in(key, |handles| {
            if let Handles::Upstream(count) = handles {
                count.add(1);
            }
        });
    }

    /// Runs `count` with this thread's handles for `key`, resolving them
    /// first when the thread has none yet.
    fn count_in<K: TableKey>(&self, key: K, count: impl FnOnce(&mut Handles)) {
        let mut count = Some(count);
        // Gone only while the thread ends; then the handles are resolved
        // for this one count.
        let _ = HANDLES.try_with(|table| {
            let mut table = lock(table);
            if let Some(handles) = key.find(&mut table) {
                if let Some(count) = count.take() {
                    count(handles);
                }
                return;
            }
            let Some(mut handles) = self.handles(key.family(), key.labels()) else {
                return;
            };
            if table.len() >= HANDLES_PER_THREAD {
                // Dropped handles pass their counts on.
                table.clear();
            }
            if let Some(count) = count.take() {
                count(&mut handles);
            }
            key.keep(&mut table, handles);
        });
        if let Some(count) = count.take()
            && let Some(mut handles) = self.handles(key.family(), key.labels())
        {
            count(&mut handles);
        }
    }

    /// Passes every thread's counts on to the metrics, so that they can be
    /// read (as [`Metrics::render`] does).
    pub fn flush(&self) {
        let tables: Vec<Arc<Mutex<HandleTable>>> = lock(&THREAD_TABLES)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for table in tables {
            for handles in lock(&table).values_mut() {
                handles.flush();
            }
        }
    }

    /// Resolves the handles for `labels`; none when their number is not
    /// the family's.
    fn handles(&self, family: Family, labels: &[&str]) -> Option<Handles> {
        Some(match family {
            Family::Request => {
                let [service, method, route, _status] = labels else {
                    return None;
                };
                Handles::Request {
                    count: Pending::new(
                        self.http_requests_total
                            .get_metric_with_label_values(labels)
                            .ok()?,
                    ),
                    duration: self
                        .http_request_duration_seconds
                        .get_metric_with_label_values(&[service, method, route])
                        .ok()?
                        .local(),
                }
            }
            Family::Upstream => Handles::Upstream(Pending::new(
                self.gateway_upstream_requests_total
                    .get_metric_with_label_values(labels)
                    .ok()?,
            )),
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.flush();
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Numbers the metric sets of a process (tests make many).
static METRIC_SETS: AtomicU64 = AtomicU64::new(0);

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

#[cfg(test)]
mod tests {
    use super::*;

    fn count_of(metrics: &Metrics, line_start: &str) -> u64 {
        metrics
            .render()
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    #[test]
    fn counts_from_every_thread_reach_their_own_metrics_only() {
        let (a, b) = (Metrics::new().unwrap(), Metrics::new().unwrap());
        let ok =
            r#"gatehouse_http_requests_total{method="GET",route="/x",service="s",status="200"}"#;
        let took = Duration::from_millis(3);
        a.request_completed("s", "GET", "/x", "200", took);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                a.request_completed("s", "GET", "/x", "200", took);
                a.request_completed("s", "GET", "/x", "200", took);
            });
        });
        b.request_completed("s", "GET", "/x", "200", took);
        assert_eq!(count_of(&a, ok), 3);
        assert_eq!(count_of(&b, ok), 1);
        let slow = r#"gatehouse_http_request_duration_seconds_bucket{method="GET",route="/x",service="s",le="0.0025"}"#;
        let fast = r#"gatehouse_http_request_duration_seconds_bucket{method="GET",route="/x",service="s",le="0.005"}"#;
        assert_eq!((count_of(&a, slow), count_of(&a, fast)), (0, 3));

        a.upstream_responded("/x", "http://127.0.0.1:1", "502");
        let upstream = r#"gatehouse_gateway_upstream_requests_total{route="/x",status="502",upstream="http://127.0.0.1:1"}"#;
        assert_eq!(count_of(&a, upstream), 1);
        assert_eq!(count_of(&b, upstream), 0);
    }

    #[test]
    fn static_labels_count_with_the_same_text_found_elsewhere() {
        let m = Metrics::new().unwrap();
        let line =
            r#"gatehouse_http_requests_total{method="GET",route="/s",service="s",status="200"}"#;
        let took = Duration::from_millis(1);
        m.request_completed_static(["s", "GET", "/s", "200"], took);
        m.request_completed_static(["s", "GET", "/s", "200"], took);
        // The same text, at addresses of its own.
        let (method, route) = (String::from("GET"), String::from("/s"));
        m.request_completed("s", &method, &route, &String::from("200"), took);
        assert_eq!(count_of(&m, line), 3);
        let other =
            r#"gatehouse_http_requests_total{method="GET",route="/s",service="s",status="404"}"#;
        m.request_completed_static(["s", "GET", "/s", "404"], took);
        assert_eq!((count_of(&m, line), count_of(&m, other)), (3, 1));
    }

    #[test]
    fn counts_of_a_thread_still_running_reach_a_scrape() {
        let m = Metrics::new().unwrap();
        let line = r#"gatehouse_gateway_upstream_requests_total{route="/live",status="200",upstream="http://10.0.0.2:1"}"#;
        let (go, wait_for_go) = std::sync::mpsc::channel::<()>();
        let (done, wait_for_done) = std::sync::mpsc::channel::<()>();
        let m = &m;
        std::thread::scope(|scope| {
            // Counts one request at each go, and stays alive in between.
            scope.spawn(move || {
                for _ in 0..2 {
                    wait_for_go.recv().unwrap();
                    m.upstream_responded("/live", "http://10.0.0.2:1", "200");
                    done.send(()).unwrap();
                }
            });
            for expected in 1..=2 {
                go.send(()).unwrap();
                wait_for_done.recv().unwrap();
                assert_eq!(count_of(m, line), expected);
            }
        });
    }

    #[test]
    fn a_thread_keeps_a_bounded_number_of_handles() {
        let m = Metrics::new().unwrap();
        for i in 0..HANDLES_PER_THREAD + 10 {
            m.upstream_responded("/r", &format!("http://10.0.0.1:{i}"), "200");
        }
        assert!(HANDLES.with(|t| lock(t).len()) <= HANDLES_PER_THREAD);
        let last = format!(
            r#"gatehouse_gateway_upstream_requests_total{{route="/r",status="200",upstream="http://10.0.0.1:{}"}}"#,
            HANDLES_PER_THREAD + 9
        );
        assert_eq!(count_of(&m, &last), 1);
    }
}
