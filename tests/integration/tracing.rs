//! Trace context across processes: spans exported over OTLP to a receiver
//! the test runs itself, the caller's `traceparent` continued by the server,
//! and every outgoing gRPC call carrying the current trace.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde_json::json;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use crate::binary::{ServiceProcess, free_port};
use crate::support::PASSWORD;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.got.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// (service.name, span name, trace id, parent span id) of every span received.
fn spans(receiver: &Receiver) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for req in receiver.got.lock().unwrap().iter() {
        for rs in &req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    out.push((
                        service.clone(),
                        span.name.clone(),
                        hex::encode(&span.trace_id),
                        hex::encode(&span.parent_span_id),
                    ));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_and_continue_the_callers_trace() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);

    let dir = tempfile::tempdir().unwrap();
    let mut service = ServiceProcess::spawn(
        env!("CARGO_BIN_EXE_gatehouse-identity"),
        "identity",
        free_port(),
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ],
    );
    service.wait_line("service started");
    let base = service.base.clone();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = http
        .post(format!("{base}/v1/users"))
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .json(&json!({"email": "traced@example.org", "password": PASSWORD, "display_name": "T"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let found = loop {
        let all = spans(&receiver);
        if let Some(s) = all.iter().find(|s| s.2 == TRACE_ID && s.1 == "request") {
            break s.clone();
        }
        if Instant::now() > deadline {
            panic!("no span of trace {TRACE_ID} received; got {all:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(service);
    assert_eq!(
        found.3, PARENT_ID,
        "the server span is a child of the caller's span"
    );
    assert!(found.0.contains("gatehouse-identity"), "{found:?}");
}

#[tokio::test]
async fn outgoing_grpc_calls_carry_the_current_trace_and_request_id() {
    // A stand-in service that records what arrives and answers "unimplemented".
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |headers: http::HeaderMap| {
        let record = record.clone();
        async move {
            if let Some(v) = headers.get("traceparent") {
                record.lock().unwrap().push(v.to_str().unwrap().to_owned());
            }
            if let Some(v) = headers.get("x-request-id") {
                record
                    .lock()
                    .unwrap()
                    .push(format!("request-id {}", v.to_str().unwrap()));
            }
            (
                [("content-type", "application/grpc"), ("grpc-status", "12")],
                "",
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let registry = Arc::new(gatehouse::kernel::registry::InProcessRegistry::default());
    use gatehouse::kernel::registry::Registry as _;
    registry
        .register(
            gatehouse::kernel::registry::Instance::new("recorder", format!("http://{addr}")),
            gatehouse::kernel::health::Probes::default(),
        )
        .await
        .unwrap();
    let clients = gatehouse::kernel::rpc::Clients::new(registry, &Default::default(), None);

    // This test's thread gets a subscriber that gives spans OpenTelemetry ids.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let span = tracing::info_span!("caller");
    let trace_id = span.context().span().span_context().trace_id().to_string();
    let call = async {
        let channel = clients.channel("recorder").await.unwrap();
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let answer = client
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await;
        assert_eq!(answer.unwrap_err().code(), tonic::Code::Unimplemented);
    }
    .instrument(span);
    gatehouse::kernel::telemetry::with_request_id("req-42".into(), call).await;

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1], "request-id req-42");
    assert!(
        seen[0].starts_with(&format!("00-{trace_id}-")),
        "{} vs {trace_id}",
        seen[0]
    );
}
