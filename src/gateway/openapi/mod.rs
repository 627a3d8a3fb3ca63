//! The gateway's API document and docs page. Each service describes its own
//! public HTTP API as OpenAPI 3.1 at `/openapi.json`; the gateway fetches
//! those documents from instances found in the registry and merges them
//! into one document of what a client reaches through the gateway:
//!
//! - a path is kept only when the route table sends it to the service that
//!   described it (a prefix-stripping route puts its prefix back in front);
//! - a route's method list narrows the operations listed;
//! - on `required` routes every operation asks for a bearer token;
//! - every operation lists the responses the gateway gives of its own on its
//!   route (`edge_responses`), with the gateway's `Problem` schema.
//!
//! Services are asked at once, each within a deadline; their components
//! are merged by name, the core services' first. A component whose name an
//! earlier service took for something else is renamed `service.Name`, and
//! that service's references follow it; security schemes keep the first
//! of each name, and the gateway's own `bearer` scheme replaces any of that
//! name; `servers` entries are dropped
//! (clients reach everything through the gateway). The merged document is
//! cached for a short while; one merge runs at a time. A service that
//! cannot be reached is named under `x-gatehouse-unavailable` and that
//! document is kept for less time. A service that serves no document (404)
//! is simply not described.
//! `/docs` is Swagger UI (its files are built into the binary) reading
//! `/openapi.json`.
//!
//! Rooms: `rename.rs` (components renamed when their names clash); this
//! file fetches, merges and serves.

mod rename;

use rename::rename_clashes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

use super::client::{ask, upstream};
use super::config::{AuthPolicy, UpstreamProtocol};
use super::proxy::Gateway;
use super::routes::{Route, built_in, normalise};
use crate::kernel::openapi::DOCUMENT_PATH;

/// How long a merged document is served before it is merged again.
const FRESH_FOR: Duration = Duration::from_secs(10);
/// The same for a document that misses an unreachable service.
const PARTIAL_FOR: Duration = Duration::from_secs(5);
/// How long one instance may take to hand over its document.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one service may take, over all its instances.
const SERVICE_DEADLINE: Duration = Duration::from_secs(3);
/// Largest service document read.
const MAX_DOCUMENT: usize = 4 * 1024 * 1024;

/// The operation keys of an OpenAPI path item.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

#[derive(Clone)]
struct Docs {
    gateway: Gateway,
    cached: Arc<Mutex<Option<Cached>>>,
}

/// A merged document, serialised, and until when it is served.
struct Cached {
    until: Instant,
    json: Bytes,
}

/// Where the docs page is served (and its files, below it).
pub const DOCS_PATH: &str = "/docs";

/// Whether `path` is the document, the docs page or one of its files.
pub fn is_local(path: &str) -> bool {
    path == DOCUMENT_PATH
        || path
            .strip_prefix(DOCS_PATH)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// [`DOCUMENT_PATH`] and [`DOCS_PATH`], served by the gateway itself.
pub fn routes(gateway: Gateway) -> Router {
    let docs = Docs {
        gateway,
        cached: Arc::default(),
    };
    Router::new()
        .route(DOCUMENT_PATH, get(document))
        .with_state(docs)
        .merge(
            utoipa_swagger_ui::SwaggerUi::new(DOCS_PATH)
                .config(utoipa_swagger_ui::Config::from(DOCUMENT_PATH)),
        )
}

async fn document(State(docs): State<Docs>) -> Response {
    let mut cached = docs.cached.lock().await;
    let json = match cached.as_ref() {
        Some(c) if Instant::now() < c.until => c.json.clone(),
        _ => {
            let (doc, complete) = merge(&docs.gateway).await;
            let json = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
            let fresh_for = if complete { FRESH_FOR } else { PARTIAL_FOR };
            *cached = Some(Cached {
                until: Instant::now() + fresh_for,
                json: json.clone(),
            });
            json
        }
    };
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// The merged document, and whether every service could be asked.
async fn merge(gw: &Gateway) -> (Value, bool) {
    // The core services first, so their components win a name clash.
    let core: Vec<String> = built_in().into_iter().map(|r| r.service).collect();
    let mut services: Vec<(String, UpstreamProtocol)> = Vec::new();
    for route in gw.table().routes() {
        if !services.iter().any(|(s, _)| *s == route.config.service) {
            services.push((route.config.service.clone(), route.config.upstream_protocol));
        }
    }
    services.sort_by_key(|(s, _)| !core.contains(s));
    // Every service is asked at once; one that takes too long is unavailable.
    let mut asked = tokio::task::JoinSet::new();
    for (i, (service, protocol)) in services.iter().cloned().enumerate() {
        let gw = gw.clone();
        asked.spawn(async move {
            let doc = tokio::time::timeout(SERVICE_DEADLINE, fetch(&gw, &service, protocol)).await;
            (i, doc.unwrap_or(Err(())))
        });
    }
    let mut docs: Vec<Result<Option<Value>, ()>> = vec![Err(()); services.len()];
    while let Some(response) = asked.join_next().await {
        if let Ok((i, doc)) = response {
            docs[i] = doc;
        }
    }
    let mut paths = Map::new();
    let mut components = Map::new();
    // The shape of the gateway's own responses, which every operation
    // lists (see `edge_responses`): a service's `Problem` of another shape
    // is renamed.
    let problem = <crate::kernel::error::Problem as utoipa::PartialSchema>::schema();
    components.insert(
        "schemas".into(),
        json!({ "Problem": serde_json::to_value(problem).unwrap_or_default() }),
    );
    let mut unavailable = Vec::new();
    for ((service, _), doc) in services.iter().zip(docs) {
        let service = service.as_str();
        let mut doc = match doc {
            Ok(Some(doc)) => doc,
            Ok(None) => continue,
            Err(()) => {
                unavailable.push(Value::from(service));
                continue;
            }
        };
        rename_clashes(service, &mut doc, &components);
        if let Some(own) = doc.get("paths").and_then(Value::as_object) {
            for (path, item) in own {
                add_path(gw, service, path, item, &mut paths);
            }
        }
        if let Some(own) = doc.get("components").and_then(Value::as_object) {
            for (kind, entries) in own {
                let Some(entries) = entries.as_object() else {
                    continue;
                };
                let merged = components
                    .entry(kind.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Some(merged) = merged.as_object_mut() {
                    for (name, entry) in entries {
                        merged.entry(name.clone()).or_insert_with(|| entry.clone());
                    }
                }
            }
        }
    }
    let schemes = components
        .entry("securitySchemes")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(schemes) = schemes.as_object_mut() {
        // The gateway's own scheme: no service's document replaces it.
        schemes.insert(
            "bearer".into(),
            json!({"type": "http", "scheme": "bearer", "bearerFormat": "PASETO v4.public"}),
        );
    }
    let complete = unavailable.is_empty();
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "gatehouse",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The public HTTP API of the services behind this gateway.",
        },
        "paths": paths,
        "components": components,
    });
    if !complete {
        doc["x-gatehouse-unavailable"] = Value::Array(unavailable);
    }
    (doc, complete)
}

/// Adds the operations of `item` that the gateway routes to `service`.
fn add_path(gw: &Gateway, service: &str, path: &str, item: &Value, paths: &mut Map<String, Value>) {
    for route in gw.table().routes() {
        if route.config.service != service {
            continue;
        }
        let public_path = if route.config.strip_prefix {
            format!("{}{}", route.config.prefix.trim_end_matches('/'), path)
        } else {
            path.to_owned()
        };
        if !routed_by(gw, &public_path, route) {
            continue;
        }
        let Some(item) = item.as_object() else {
            continue;
        };
        let mut kept = Map::new();
        for (key, value) in item {
            // Clients reach the API through the gateway, never at a
            // service's own address.
            if key == "servers" {
                continue;
            }
            let is_operation = METHODS.contains(&key.as_str());
            if is_operation && !route.config.allows(&key.to_ascii_uppercase()) {
                continue;
            }
            let mut value = value.clone();
            if is_operation {
                let Some(operation) = value.as_object_mut() else {
                    continue;
                };
                operation.remove("servers");
                if route.config.auth == AuthPolicy::Required {
                    operation.insert("security".into(), json!([{"bearer": []}]));
                }
                edge_responses(operation, &route.config);
            }
            kept.insert(key.clone(), value);
        }
        if !kept.keys().any(|k| METHODS.contains(&k.as_str())) {
            continue;
        }
        let entry = paths
            .entry(public_path)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(entry) = entry.as_object_mut() {
            for (key, value) in kept {
                entry.entry(key).or_insert(value);
            }
        }
    }
}

/// Adds to an operation the responses the gateway gives of its own on the
/// route (see `fault.rs`), where the service's document does not list
/// that status already.
fn edge_responses(operation: &mut Map<String, Value>, route: &crate::gateway::config::RouteConfig) {
    let mut problems = vec![
        (
            "400",
            "The request is malformed: its path, query, Host, method or credentials (`invalid_path`, `invalid_query`, `invalid_host`, `invalid_method`, `several_credentials`)",
        ),
        (
            "502",
            "The service failed to answer (`upstream_failed`, `bad_upstream`)",
        ),
        (
            "503",
            "No instance of the service is available (`upstream_unavailable`)",
        ),
        (
            "504",
            "The service did not answer in time (`upstream_timeout`)",
        ),
    ];
    if route.rate_limit {
        problems.push((
            "429",
            "Too many requests from this client (`rate_limited`); see `Retry-After`",
        ));
    }
    if route.auth != AuthPolicy::Public {
        problems.push((
            "401",
            "The bearer token is missing, malformed, expired or revoked",
        ));
    }
    if !route.rules.is_empty() {
        problems.push((
            "403",
            "The caller lacks the permission the route's rule names for the method and path \
             (`forbidden`, naming it in `permission`), or no rule covers them (`forbidden`)",
        ));
    }
    let Some(responses) = operation
        .entry("responses")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
    else {
        return;
    };
    for (status, description) in problems {
        responses.entry(status).or_insert_with(|| {
            json!({
                "description": description,
                "content": {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/Problem"}
                }},
            })
        });
    }
}

/// Whether the route table sends `path` to `route`.
fn routed_by(gw: &Gateway, path: &str, route: &Route) -> bool {
    let Ok(segments) = normalise(path) else {
        return false;
    };
    gw.table()
        .find(&segments)
        .is_some_and(|found| gw.table().route(found).config.prefix == route.config.prefix)
}

/// The document of `service`, from the first of its instances that responds:
/// none when the service serves no document, an error when no instance
/// could be asked.
async fn fetch(
    gw: &Gateway,
    service: &str,
    protocol: UpstreamProtocol,
) -> Result<Option<Value>, ()> {
    let instances = gw.registry().resolve(service).await.map_err(|_| ())?;
    let client = upstream(protocol);
    for instance in instances.iter() {
        let url = format!("{}{DOCUMENT_PATH}", instance.url);
        let Some(response) = ask(&client, &url, FETCH_TIMEOUT).await else {
            continue;
        };
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => continue,
        }
        let limited = http_body_util::Limited::new(response.into_body(), MAX_DOCUMENT);
        let Ok(Ok(body)) = tokio::time::timeout(FETCH_TIMEOUT, limited.collect()).await else {
            continue;
        };
        match serde_json::from_slice::<Value>(&body.to_bytes()) {
            Ok(doc) if doc.get("openapi").is_some() => return Ok(Some(doc)),
            _ => {
                tracing::warn!(service, instance = %instance.url, "service answered /openapi.json with no OpenAPI document");
                return Ok(None);
            }
        }
    }
    Err(())
}
