//! Each service describes its public HTTP API as an OpenAPI 3.1 document
//! (utoipa attributes on its handlers) and serves it at `/openapi.json`.
//! The gateway merges these into the one document clients read.

use axum::Router;
use axum::body::Bytes;
use axum::routing::get;
use http::header;
use utoipa::Modify;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{Ref, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, ResponseBuilder};

/// Adds the `bearer` scheme that signed-in operations name: a PASETO
/// v4.public access token from `POST /v1/auth/login`.
pub struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("PASETO v4.public")
                    .build(),
            ),
        );
    }
}

/// Where every service, and the gateway for the merged document, serves
/// its API document.
pub const DOCUMENT_PATH: &str = "/openapi.json";

/// `GET` [`DOCUMENT_PATH`] answering `doc`, serialised once.
pub fn serve(doc: &OpenApi) -> Router {
    let json = Bytes::from(serde_json::to_vec(doc).unwrap_or_default());
    Router::new().route(
        DOCUMENT_PATH,
        get(move || {
            let json = json.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], json) }
        }),
    )
}

/// Adds to every operation the responses the shared server stack gives
/// whatever the handler (see `server.rs` and `error.rs`): for an operation
/// with a JSON body, 400 `malformed_json`, 413 `payload_too_large`, 415
/// `unsupported_media_type` and 422 `invalid_body`; for every operation,
/// 400 `invalid_host`/`invalid_method` and 503 (`timeout`, or a
/// dependency away). A response the operation already documents is kept.
pub struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut OpenApi) {
        operations(doc).for_each(add_common);
    }
}

/// Every operation of `doc` (those of the methods the APIs use).
fn operations(doc: &mut OpenApi) -> impl Iterator<Item = &mut Operation> {
    doc.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
    })
}

/// Adds each `(status, description)` problem response `operation` does not
/// document already.
fn add_problems(operation: &mut Operation, responses: &[(&str, &str)]) {
    for (status, description) in responses {
        operation
            .responses
            .responses
            .entry((*status).to_owned())
            .or_insert_with(|| RefOr::T(problem(description)));
    }
}

fn add_common(operation: &mut Operation) {
    // A header field is there or not: it has no `null`, which utoipa
    // allows an optional one.
    for parameter in operation.parameters.iter_mut().flatten() {
        if parameter.parameter_in != ParameterIn::Header {
            continue;
        }
        if let Some(RefOr::T(Schema::Object(schema))) = &mut parameter.schema
            && let SchemaType::Array(types) = &schema.schema_type
        {
            let types: Vec<Type> = types
                .iter()
                .filter(|t| **t != Type::Null)
                .cloned()
                .collect();
            if let [only] = types.as_slice() {
                schema.schema_type = SchemaType::Type(only.clone());
            }
        }
    }
    let mut responses = vec![
        (
            "400",
            "The request is malformed: its Host or method (`invalid_host`, `invalid_method`), or its JSON body (`malformed_json`)",
        ),
        (
            "503",
            "A dependency is away or the request took too long; try again (`Retry-After`)",
        ),
    ];
    if operation.request_body.is_some() {
        responses.extend([
            (
                "413",
                "The body is larger than accepted (`payload_too_large`)",
            ),
            (
                "415",
                "The body is not sent as `application/json` (`unsupported_media_type`)",
            ),
            (
                "422",
                "The body is not a JSON object with the expected fields (`invalid_body`), or a field is not valid (`validation_failed`, naming it in `field`)",
            ),
        ]);
    }
    add_problems(operation, &responses);
}

/// Adds to every operation that asks for a bearer token the responses of a
/// permission check: 401 without a valid token, 403 `forbidden` (naming
/// the permission it needs) without the permission. For APIs whose every
/// signed-in operation is guarded by a permission.
pub struct PermissionResponses;

impl Modify for PermissionResponses {
    fn modify(&self, doc: &mut OpenApi) {
        let signed_in =
            operations(doc).filter(|op| op.security.as_ref().is_some_and(|s| !s.is_empty()));
        for operation in signed_in {
            add_problems(
                operation,
                &[
                    ("401", "No valid bearer token"),
                    (
                        "403",
                        "The caller lacks the permission this needs (`forbidden`, naming it in `permission`)",
                    ),
                ],
            );
        }
    }
}

/// A problem+json answer described by `description`.
pub fn problem(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// Sets the length bounds of string properties named as (schema, property)
/// in `doc`'s components: a rule the service checks that the document
/// would otherwise leave unsaid.
pub fn constrain_strings(doc: &mut OpenApi, fields: &[(&str, &str)], min: usize, max: usize) {
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    for (schema, property) in fields {
        let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(*schema) else {
            continue;
        };
        if let Some(RefOr::T(Schema::Object(field))) = object.properties.get_mut(*property) {
            field.min_length = Some(min);
            field.max_length = Some(max);
        }
    }
}
