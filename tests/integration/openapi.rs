//! The API document the gateway serves matches what the services accept and
//! answer: a sample of real requests and answers is checked against the
//! schemas it declares, and team services' own documents are merged under
//! the paths the gateway routes to them.

use gatehouse::gateway::config::{AuthPolicy, RouteConfig};
use serde_json::{Value, json};

use crate::support::{PASSWORD, TestApp, closed_url};

/// Follows a local `$ref` (`#/components/schemas/X`).
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(pointer) => {
            let target = doc
                .pointer(pointer.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {pointer}"));
            resolve(doc, target)
        }
        None => schema,
    }
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        other => panic!("unknown schema type {other}"),
    }
}

/// Checks `value` against `schema`: types, formats, required properties,
/// and no property the schema does not declare.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    for key in ["oneOf", "anyOf"] {
        if let Some(choices) = schema.get(key).and_then(Value::as_array) {
            return choices
                .iter()
                .any(|c| conforms(doc, c, value, at).is_ok())
                .then_some(())
                .ok_or_else(|| format!("{at}: {value} matches none of {key}"));
        }
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| type_matches(t, value)) {
        return Err(format!("{at}: {value} is not {types:?}"));
    }
    if let (Some(format), Some(text)) =
        (schema.get("format").and_then(Value::as_str), value.as_str())
    {
        let ok = match format {
            "date-time" => chrono::DateTime::parse_from_rfc3339(text).is_ok(),
            "uuid" => uuid::Uuid::parse_str(text).is_ok(),
            "email" => text.contains('@'),
            _ => true,
        };
        if !ok {
            return Err(format!("{at}: {text:?} is not a {format}"));
        }
    }
    if let Some(object) = value.as_object() {
        let declared = schema
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = required.as_str().unwrap();
            if !object.contains_key(name) {
                return Err(format!("{at}: required {name} is missing"));
            }
        }
        // A map's keys are its own: each value is held to the schema of
        // additional properties.
        let open = schema
            .get("additionalProperties")
            .filter(|extra| extra.is_object());
        for (name, field) in object {
            let Some(field_schema) = declared.get(name).or(open) else {
                return Err(format!("{at}: {name} is not in the document"));
            };
            conforms(doc, field_schema, field, &format!("{at}.{name}"))?;
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            conforms(doc, items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// One request and its answer, checked against the document's operation.
async fn exchange(
    app: &TestApp,
    doc: &Value,
    (method, path, template): (http::Method, &str, &str),
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let operation = &doc["paths"][template][method.as_str().to_lowercase()];
    assert!(
        operation.is_object(),
        "{method} {template} is not documented"
    );
    let mut request = app
        .http
        .request(method.clone(), format!("{}{path}", app.gateway_base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = &body {
        let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
        conforms(doc, schema, body, "request").unwrap();
        // Every documented field is one the service takes.
        let declared = resolve(doc, schema)["properties"].as_object().unwrap();
        assert!(
            declared.keys().all(|k| body.get(k).is_some()),
            "{template}: send every field"
        );
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let declared = &operation["responses"][status.to_string()];
    assert!(
        declared.is_object(),
        "{method} {template}: {status} is not documented"
    );
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let answer: Value = if status == 204 {
        Value::Null
    } else {
        response.json().await.unwrap()
    };
    match content_type {
        Some(ct) => {
            let schema = &declared["content"][ct.as_str()]["schema"];
            assert!(
                schema.is_object(),
                "{method} {template} {status}: {ct} not documented"
            );
            conforms(doc, schema, &answer, "response").unwrap();
        }
        None => assert!(
            declared.get("content").is_none(),
            "{template}: body expected"
        ),
    }
    (status, answer)
}

#[tokio::test]
async fn the_merged_document_matches_what_the_services_accept_and_answer() {
    use http::Method;
    let app = TestApp::builder().with_audit().start().await;
    let doc = app.gateway_json("/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc.get("x-gatehouse-unavailable").is_none(), "{doc}");
    let user = json!({"email": "doc@example.org", "password": PASSWORD, "display_name": "Doc"});
    let post = |path| (Method::POST, path, path);
    let (status, created) = exchange(&app, &doc, post("/v1/users"), None, Some(user.clone())).await;
    assert_eq!(status, 201);
    // The check has teeth: a wrong type, a missing field, an undeclared one.
    let schema = &doc["paths"]["/v1/users"]["post"]["responses"]["201"]["content"]["application/json"]
        ["schema"];
    let mut wrong = created.clone();
    wrong["version"] = json!("7");
    assert!(conforms(&doc, schema, &wrong, "r").is_err());
    let mut missing = created.clone();
    missing.as_object_mut().unwrap().remove("email");
    assert!(conforms(&doc, schema, &missing, "r").is_err());
    let mut extra = created.clone();
    extra["password_hash"] = json!("x");
    assert!(conforms(&doc, schema, &extra, "r").is_err());
    let (status, problem) = exchange(&app, &doc, post("/v1/users"), None, Some(user)).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (409, Some("email_taken"))
    );
    let bad = json!({"email": "short@example.org", "password": "short", "display_name": "D"});
    let (status, _) = exchange(&app, &doc, post("/v1/users"), None, Some(bad)).await;
    assert_eq!(status, 422);

    // A client that signed in before sends its device token.
    let device = app.login("doc@example.org", PASSWORD).await["device_token"].clone();
    let login = json!({"email": "doc@example.org", "password": PASSWORD, "device_token": device});
    let (status, pair) = exchange(&app, &doc, post("/v1/auth/login"), None, Some(login)).await;
    assert_eq!(status, 200);
    assert!(pair["device_token"].is_string(), "{pair}");
    let refresh = json!({"refresh_token": pair["refresh_token"]});
    let (status, pair) = exchange(&app, &doc, post("/v1/auth/refresh"), None, Some(refresh)).await;
    assert_eq!(status, 200);
    let token = pair["access_token"].as_str().unwrap();

    let me = (Method::GET, "/v1/users/me", "/v1/users/me");
    let (status, _) = exchange(&app, &doc, me.clone(), None, None).await;
    assert_eq!(status, 401);
    let (status, _) = exchange(&app, &doc, me, Some(token), None).await;
    assert_eq!(status, 200);
    let patch = (Method::PATCH, "/v1/users/me", "/v1/users/me");
    let (status, user) = exchange(
        &app,
        &doc,
        patch,
        Some(token),
        Some(json!({"display_name": "Docs"})),
    )
    .await;
    assert_eq!((status, user["display_name"].as_str()), (200, Some("Docs")));
    let sessions = (Method::GET, "/v1/auth/sessions", "/v1/auth/sessions");
    let (status, list) = exchange(&app, &doc, sessions, Some(token), None).await;
    assert_eq!(status, 200);
    let other = format!("/v1/auth/sessions/{}", uuid::Uuid::now_v7());
    let end = (Method::DELETE, other.as_str(), "/v1/auth/sessions/{id}");
    let (status, _) = exchange(&app, &doc, end, Some(token), None).await;
    assert_eq!(status, 404);
    // The sign-in for the device token opened one, the documented one the other.
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2);
    let keys = (Method::GET, "/v1/auth/keys", "/v1/auth/keys");
    let (status, _) = exchange(&app, &doc, keys, None, None).await;
    assert_eq!(status, 200);
    let (status, _) = exchange(&app, &doc, post("/v1/auth/logout"), Some(token), None).await;
    assert_eq!(status, 204);
    // The audit log, as its reader sees it.
    let auditor = app.admin("auditor@example.org").await;
    let events = (Method::GET, "/v1/audit/events?limit=5", "/v1/audit/events");
    let (status, page) = exchange(&app, &doc, events, Some(&auditor), None).await;
    assert_eq!(status, 200);
    assert!(!page["items"].as_array().unwrap().is_empty(), "{page}");
    let verify = (Method::GET, "/v1/audit/verify", "/v1/audit/verify");
    let (status, _) = exchange(&app, &doc, verify, Some(&auditor), None).await;
    assert_eq!(status, 200);
    // Routes the gateway guards say so.
    assert_eq!(
        doc["paths"]["/v1/users/me"]["get"]["security"],
        json!([{"bearer": []}])
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

/// A team service serving `team_doc` as its OpenAPI document.
async fn team_service(team_doc: Value) -> String {
    let app = axum::Router::new().route(
        "/openapi.json",
        axum::routing::get(move || {
            let doc = team_doc.clone();
            async move { axum::Json(doc) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn team_documents_appear_under_their_routes_and_docs_page_reads_the_document() {
    let ok = json!({"responses": {"200": {"description": "Fine"}}});
    // Billing and ledger both have a `Page` of `Item`s, written alike, but
    // their `Item`s differ.
    let page = json!({
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}}},
        "discriminator": {"propertyName": "kind", "mapping": {"item": "Item"}},
    });
    // Its `UserView` is not identity's: the name is taken.
    let owner = json!({"$ref": "#/components/schemas/UserView"});
    let invoice = json!({"type": "object", "properties": {"owner": owner}});
    let billing_user = json!({"type": "object", "properties": {"account": {"type": "string"}}});
    let billing = team_service(json!({
        "openapi": "3.1.0",
        "info": {"title": "billing", "version": "1"},
        "paths": {
            "/invoices": {"get": ok, "post": {"responses": {"201": {"description": "Made"}}}},
            "/invoices/{id}": {"get": {"responses": {"200": {
                "description": "The invoice",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Invoice"}}},
            }}}},
        },
        "components": {"schemas": {"Invoice": invoice, "UserView": billing_user, "Page": page.clone(), "Item": {"type": "string"}}},
    }))
    .await;
    // A service behind a route that keeps its prefix, describing more than
    // the gateway sends it, with addresses and a scheme of its own.
    let ledger = team_service(json!({
        "openapi": "3.1.0",
        "info": {"title": "ledger", "version": "1"},
        "paths": {
            "/ledger/entries": {
                "servers": [{"url": "http://10.0.0.9:7000"}],
                "get": {"servers": [{"url": "http://10.0.0.9:7000"}], "responses": {"200": {
                    "description": "Entries",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Page"}}},
                }}},
            },
            "/ledger/odd": {"get": 1},
            "/v1/users": {"delete": ok},
            "/other": {"get": ok},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "oauth2", "flows": {}}},
            "schemas": {"Page": page, "Item": {"type": "integer"}},
        },
    }))
    .await;
    let app = TestApp::builder()
        .with_audit()
        .gateway(|g| {
            let mut billing = RouteConfig::new("/billing", "billing", AuthPolicy::Required);
            billing.strip_prefix = true;
            billing.methods = vec!["GET".into()];
            g.routes.push(billing);
            g.routes
                .push(RouteConfig::new("/ledger", "ledger", AuthPolicy::Required));
            g.routes
                .push(RouteConfig::new("/gone", "gone", AuthPolicy::Public));
        })
        .start()
        .await;
    app.register_instance("billing", billing).await;
    app.register_instance("ledger", ledger).await;
    app.register_instance("gone", closed_url()).await;
    let gw = &app.gateway_base;
    let doc = app.gateway_json("/openapi.json").await;
    let invoices = &doc["paths"]["/billing/invoices"];
    assert!(invoices["get"].is_object(), "{doc}");
    assert!(invoices.get("post").is_none(), "the route allows GET only");
    assert_eq!(invoices["get"]["security"], json!([{"bearer": []}]));
    // Billing's `UserView` is renamed, and its references follow it;
    // identity's keeps its name.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["billing.UserView"], billing_user, "{doc}");
    assert_ne!(schemas["UserView"], billing_user);
    assert!(schemas["UserView"]["properties"]["email"].is_object());
    assert_eq!(
        schemas["Invoice"]["properties"]["owner"]["$ref"],
        "#/components/schemas/billing.UserView"
    );
    assert_eq!(
        doc["paths"]["/billing/invoices/{id}"]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/Invoice"
    );
    assert!(doc["paths"].get("/invoices").is_none());
    // Only what the gateway sends to a service is described as that service's.
    let entries = &doc["paths"]["/ledger/entries"];
    assert!(entries["get"].is_object(), "{doc}");
    assert!(entries.get("servers").is_none() && entries["get"].get("servers").is_none());
    assert!(doc["paths"].get("/other").is_none());
    // Ledger's `Item` is renamed, and so is its `Page`, which differs from
    // billing's once it refers to the renamed `Item`.
    assert_eq!(schemas["Item"]["type"], "string");
    assert_eq!(schemas["ledger.Item"]["type"], "integer", "{doc}");
    let ledger_page = &schemas["ledger.Page"];
    assert_eq!(
        ledger_page["properties"]["items"]["items"]["$ref"],
        "#/components/schemas/ledger.Item"
    );
    assert_eq!(
        ledger_page["discriminator"]["mapping"]["item"],
        "ledger.Item"
    );
    assert_eq!(
        schemas["Page"]["properties"]["items"]["items"]["$ref"],
        "#/components/schemas/Item"
    );
    assert_eq!(
        entries["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ledger.Page"
    );
    assert!(doc["paths"]["/v1/users"].get("delete").is_none());
    assert!(doc["paths"]["/v1/users"]["post"].is_object());
    assert!(doc["paths"].get("/ledger/odd").is_none());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["type"],
        "http"
    );
    // The core services are still there; the unreachable one is named.
    assert!(doc["paths"]["/v1/auth/login"]["post"].is_object());
    assert_eq!(doc["x-gatehouse-unavailable"], json!(["gone"]));

    let page = app.http.get(format!("{gw}/docs/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().await.unwrap().contains("swagger-ui"));
    let init = app
        .http
        .get(format!("{gw}/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("/openapi.json"), "{init}");
}

#[tokio::test]
async fn the_document_states_every_answer_and_rule_the_api_keeps() {
    let app = TestApp::builder().with_authz().start().await;
    let doc = app.gateway_json("/openapi.json").await;
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    let statuses = |op: &Value| -> Vec<String> {
        op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    // A JSON body's answers, whatever the handler; the edge's own, on every route.
    let register = op("/v1/users", "post");
    for status in ["400", "413", "415", "422", "429", "502", "503", "504"] {
        assert!(
            statuses(&register).contains(&status.to_owned()),
            "{status}: {register}"
        );
    }
    let me = op("/v1/users/me", "get");
    assert!(statuses(&me).contains(&"401".to_owned()));
    for (_, answer) in me["responses"].as_object().unwrap() {
        if let Some(content) = answer.get("content") {
            assert!(
                resolve(
                    &doc,
                    &content.as_object().unwrap().values().next().unwrap()["schema"]
                )
                .is_object()
            );
        }
    }
    // Formats and rules the services check.
    let schema = |name: &str| doc["components"]["schemas"][name].clone();
    assert_eq!(
        schema("RegisterBody")["properties"]["email"]["format"],
        "email"
    );
    assert_eq!(
        schema("LoginBody")["properties"]["email"]["format"],
        "email"
    );
    assert_eq!(
        schema("RegisterBody")["properties"]["password"]["minLength"],
        12
    );
    assert_eq!(
        schema("PasswordBody")["properties"]["new_password"]["minLength"],
        12
    );
    assert_eq!(
        schema("ConfirmResetBody")["properties"]["new_password"]["maxLength"],
        256
    );
    assert!(schema("ProfileBody")["properties"]["display_name"]["pattern"].is_string());
    let session = op("/v1/auth/sessions/{id}", "delete");
    assert_eq!(session["parameters"][0]["schema"]["format"], "uuid");
    let patch = op("/v1/users/me", "patch");
    let if_match = &patch["parameters"][0];
    assert_eq!(if_match["name"], "if-match");
    assert_eq!(if_match["schema"]["type"], "string");
    assert!(if_match["schema"]["pattern"].is_string());
}
