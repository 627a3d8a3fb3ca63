//! One place that sets up logging and tracing: readable text in a terminal,
//! JSON lines otherwise (or when asked); the filter comes from `RUST_LOG`
//! when set, else from `log.level`. When `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set, spans are also exported over OTLP/gRPC (the standard `OTEL_*`
//! variables tune the exporter).
//!
//! Trace context crosses process boundaries as W3C `traceparent`: servers
//! take it from incoming headers ([`parent_from`]), gRPC clients add it to
//! every outgoing call ([`inject_current`]).
//!
//! See the logging section of docs/operations.md for the field habits:
//! structured fields, units in names, never secrets or tokens.

use std::io::IsTerminal;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use super::config::{ConfigError, LogConfig, LogFormat};
use super::locks;

/// Keeps the span exporter alive; [`Telemetry::shutdown`] flushes it.
#[must_use]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered. Call once, after the services stopped.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("span export did not shut down cleanly: {e}");
        }
    }
}

/// Installs the global subscriber for the process `service_name`. Call once,
/// early, inside the Tokio runtime (the OTLP exporter needs it).
pub fn init(log: &LogConfig, service_name: &str) -> Result<Telemetry, ConfigError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(spec).map_err(|e| ConfigError(format!("RUST_LOG: {e}")))?
        }
        _ => EnvFilter::try_new(&log.level).map_err(|e| ConfigError(format!("log.level: {e}")))?,
    };
    let json = match log.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(otlp_provider(service_name)?),
        _ => None,
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("gatehouse")));
    tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(json.then(|| tracing_subscriber::fmt::layer().json().flatten_event(true)))
        .with((!json).then(tracing_subscriber::fmt::layer))
        .try_init()
        .map_err(|e| ConfigError(format!("logging: {e}")))?;
    Ok(Telemetry { provider })
}

fn otlp_provider(service_name: &str) -> Result<SdkTracerProvider, ConfigError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| ConfigError(format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}")))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The trace context a caller sent in its `traceparent` header, if any.
pub fn parent_from(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// What the request being served by a task carries with it.
pub struct RequestScope {
    /// Its `x-request-id`.
    id: Option<http::HeaderValue>,
    /// The route a handler that routes by itself (the gateway) chose, for
    /// the request metrics; set while serving, read once the response is out.
    route: std::cell::Cell<Option<&'static str>>,
    /// Where it came from, for the events it causes; services keep it, the
    /// gateway (which causes none) does not.
    origin: Option<Origin>,
    /// The signed-in user who made it, once a token check found one.
    actor: std::cell::Cell<Option<uuid::Uuid>>,
}

/// Where a request came from (see [`super::origin`]).
pub struct Origin {
    pub client: std::net::IpAddr,
    /// The caller's `traceparent`, for the trace id when no span of this
    /// process records one.
    pub traceparent: Option<http::HeaderValue>,
}

impl RequestScope {
    /// The route named while serving, if one was.
    pub fn into_route(self) -> Option<&'static str> {
        self.route.into_inner()
    }
}

/// `text` as a string that lives as long as the process, kept once however
/// often it is asked for: for names that every request carries (a route's
/// label, say) and that are few, fixed by config. Copying such a name for a
/// request costs nothing, where a shared string's count would be written by
/// every thread serving requests.
pub fn intern(text: &str) -> &'static str {
    static KEPT: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut kept = locks::lock(&KEPT);
    if let Some(found) = kept.iter().find(|k| **k == text) {
        return found;
    }
    let new: &'static str = Box::leak(Box::from(text));
    kept.push(new);
    new
}

tokio::task_local! {
    /// The request being served by this task.
    static REQUEST: RequestScope;
}

/// Runs `work` as part of the request `request_id`, so calls it makes to
/// other services carry the same id.
pub async fn with_request_id<F: std::future::Future>(request_id: String, work: F) -> F::Output {
    scoped(http::HeaderValue::from_str(&request_id).ok(), None, work).await
}

/// `work`, served inside the request scope of `id`, from `origin` (see
/// [`inject_current`] and [`name_route`]).
pub fn scoped<F: std::future::Future>(
    id: Option<http::HeaderValue>,
    origin: Option<Origin>,
    work: F,
) -> tokio::task::futures::TaskLocalFuture<RequestScope, F> {
    let scope = RequestScope {
        id,
        route: std::cell::Cell::new(None),
        origin,
        actor: std::cell::Cell::new(None),
    };
    REQUEST.scope(scope, work)
}

/// Records the signed-in user making the request being served, as the
/// actor of the events it causes. Does nothing outside a request scope.
pub fn set_actor(user: uuid::Uuid) {
    let _ = REQUEST.try_with(|scope| scope.actor.set(Some(user)));
}

/// The origin of the work this task does: what it carries for a request it
/// outlived (see [`super::origin::carry`]), else the request it serves;
/// none for a service's own work.
pub fn task_origin() -> Option<super::origin::EventOrigin> {
    super::origin::carried().or_else(event_origin)
}

/// The origin of the work done here: the request's whose database work
/// this thread does (see [`super::origin::within`]), else the task's, else
/// nothing known.
pub fn current_origin() -> super::origin::EventOrigin {
    super::origin::on_thread()
        .or_else(task_origin)
        .unwrap_or_default()
}

/// What events caused by the request being served record about it; none
/// outside a request scope.
pub fn event_origin() -> Option<super::origin::EventOrigin> {
    REQUEST
        .try_with(|scope| {
            let span = tracing::Span::current().context();
            let traced = span.span().span_context().clone();
            let trace_id = if traced.is_valid() {
                traced.trace_id().to_string()
            } else {
                scope
                    .origin
                    .as_ref()
                    .and_then(|o| o.traceparent.as_ref())
                    .and_then(|t| super::origin::trace_id_of(t.as_bytes()))
                    .unwrap_or_default()
            };
            super::origin::EventOrigin {
                actor: scope
                    .actor
                    .get()
                    .map(|u| format!("user:{u}"))
                    .unwrap_or_default(),
                client_ip: scope
                    .origin
                    .as_ref()
                    .map(|o| o.client.to_string())
                    .unwrap_or_default(),
                request_id: scope
                    .id
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
                trace_id,
            }
        })
        .ok()
}

/// Names the route the request being served was matched to, so that it is
/// counted under that route rather than a catch-all. Does nothing outside a
/// request scope.
pub fn name_route(label: &'static str) {
    let _ = REQUEST.try_with(|scope| scope.route.set(Some(label)));
}

/// Adds the current span's trace context, and the request id being served
/// and its client, to an outgoing gRPC call: the service called records
/// them on the events the call causes.
pub fn inject_current(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
    let _ = REQUEST.try_with(|scope| {
        if let Some(value) = scope
            .id
            .as_ref()
            .and_then(|v| v.to_str().ok()?.parse().ok())
        {
            metadata.insert("x-request-id", value);
        }
        let Some(origin) = &scope.origin else { return };
        if let Ok(value) = forwarded_value(origin.client).parse() {
            metadata.insert("forwarded", value);
        }
        // No span of this process continues the caller's trace: pass the
        // caller's on as it came.
        if !metadata.contains_key("traceparent")
            && let Some(value) = origin
                .traceparent
                .as_ref()
                .and_then(|t| t.to_str().ok()?.parse().ok())
        {
            metadata.insert("traceparent", value);
        }
    });
}

/// `client` as a `Forwarded` field value.
fn forwarded_value(client: std::net::IpAddr) -> String {
    match client {
        std::net::IpAddr::V4(v4) => format!("for={v4}"),
        std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    }
}

/// Adds the current span's trace context to an outgoing HTTP request.
pub fn inject_headers(headers: &mut http::HeaderMap) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    let context = span.context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}
