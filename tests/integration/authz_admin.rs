//! The admin APIs as an operator uses them through the gateway: authz's
//! roles, groups and bindings, identity's user administration guarded by
//! authz, a user-defined route guarded by a permission, and how fast a
//! change reaches each of them.

use std::time::{Duration, Instant};

use gatehouse::gateway::config::{AuthPolicy, RouteConfig};
use gatehouse::kernel::clock::Clock as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{PASSWORD, TestApp, assert_problem};

async fn app() -> TestApp {
    TestApp::builder().with_authz().start().await
}

async fn json_of(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status, "status");
    r.json().await.unwrap()
}

fn revision(r: &reqwest::Response) -> u64 {
    r.headers()["gatehouse-revision"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_admin_manages_roles_groups_and_bindings_and_others_are_forbidden() {
    let app = app().await;
    let admin = app.admin("root@example.org").await;
    let ann_token = app.signed_in("ann@example.org").await;
    let ann = app.me(&ann_token).await.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Ann holds only the `user` role: the admin API is closed to her, and
    // the answer names what she lacks.
    let refused = app
        .through(Method::GET, "/v1/authz/roles", &ann_token)
        .send()
        .await
        .unwrap();
    let body = assert_problem(refused, 403, "forbidden").await;
    assert_eq!(body["permission"], "authz:read");
    let refused = app
        .through(Method::POST, "/v1/authz/roles", &ann_token)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        assert_problem(refused, 403, "forbidden").await["permission"],
        "authz:write"
    );
    // Without a token the gateway refuses before authz is asked.
    let anonymous = app
        .http
        .get(format!("{}/v1/authz/roles", app.gateway_base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // A role, a group holding ann, and a binding of the group.
    let created = app
        .through(Method::POST, "/v1/authz/roles", &admin)
        .json(
            &json!({"name": "billing-reader", "description": "Reads invoices",
                      "permissions": ["billing.invoices:read"]}),
        )
        .send()
        .await
        .unwrap();
    let first = revision(&created);
    let role = json_of(created, 201).await;
    assert_eq!(role["permissions"], json!(["billing.invoices:read"]));
    assert_eq!(role["builtin"], false);
    let group = json_of(
        app.through(Method::POST, "/v1/authz/groups", &admin)
            .json(&json!({"name": "finance"}))
            .send()
            .await
            .unwrap(),
        201,
    )
    .await;
    let group_id = group["id"].as_str().unwrap();
    let added = app
        .through(
            Method::POST,
            &format!("/v1/authz/groups/{group_id}/members"),
            &admin,
        )
        .json(&json!({"member": format!("user:{ann}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 204);
    assert!(revision(&added) > first);
    let bound = app
        .through(Method::POST, "/v1/authz/bindings", &admin)
        .json(
            &json!({"subject": format!("group:{group_id}"), "role": "billing-reader",
                      "scope": "billing.invoices"}),
        )
        .send()
        .await
        .unwrap();
    let at = revision(&bound);
    let binding = json_of(bound, 201).await;
    assert_eq!(binding["scope"], "billing.invoices");

    // Ann may now read invoices, and can ask so herself, with the reason.
    let check = json_of(
        app.through(Method::POST, "/v1/authz/check", &ann_token)
            .json(
                &json!({"permission": "billing.invoices:read", "resource": "billing.invoices:7",
                          "at_least_revision": at}),
            )
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(check["allowed"], true, "{check}");
    assert_eq!(check["grant"]["role"], "billing-reader");
    assert_eq!(check["grant"]["group_ids"], json!([group_id]));
    assert_eq!(check["revision"], at);
    // Asking about someone else is an admin's business.
    let nosy = app
        .through(Method::POST, "/v1/authz/check", &ann_token)
        .json(&json!({"user_id": uuid::Uuid::now_v7(), "permission": "users:read"}))
        .send()
        .await
        .unwrap();
    assert_problem(nosy, 403, "forbidden").await;
    let listed = json_of(
        app.through(
            Method::GET,
            &format!("/v1/authz/bindings?subject=group:{group_id}"),
            &admin,
        )
        .send()
        .await
        .unwrap(),
        200,
    )
    .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);

    // Bad input is refused and changes nothing.
    for (path, body, status, code) in [
        (
            "/v1/authz/roles",
            json!({"name": "bad", "permissions": ["billing.invoices"]}),
            422,
            "validation_failed",
        ),
        (
            "/v1/authz/roles",
            json!({"name": "Bad Name"}),
            422,
            "validation_failed",
        ),
        (
            "/v1/authz/roles",
            json!({"name": "billing-reader"}),
            409,
            "already_exists",
        ),
        (
            "/v1/authz/bindings",
            json!({"subject": format!("user:{ann}"), "role": "nobody"}),
            404,
            "not_found",
        ),
        (
            "/v1/authz/bindings",
            json!({"subject": format!("user:{ann}"), "role": "admin", "scope": "Bad Scope"}),
            422,
            "validation_failed",
        ),
        (
            &format!("/v1/authz/groups/{group_id}/members"),
            json!({"member": format!("group:{group_id}")}),
            409,
            "group_cycle",
        ),
    ] {
        let r = app
            .through(Method::POST, path, &admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_problem(r, status, code).await;
    }
    let unchanged = app
        .through(Method::GET, "/v1/authz/roles?limit=200", &admin)
        .send()
        .await
        .unwrap();
    let roles = json_of(unchanged, 200).await;
    let names: Vec<&str> = roles["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "auditor", "billing-reader", "user"]);

    // A bound role goes only with force; built-in roles stay.
    let delete = |path: &str| app.through(Method::DELETE, path, &admin).send();
    assert_problem(
        delete("/v1/authz/roles/billing-reader").await.unwrap(),
        409,
        "role_bound",
    )
    .await;
    assert_problem(
        delete("/v1/authz/roles/user").await.unwrap(),
        409,
        "builtin_role",
    )
    .await;
    let admin_change = app
        .through(Method::PATCH, "/v1/authz/roles/admin", &admin)
        .json(&json!({"permissions": []}))
        .send()
        .await
        .unwrap();
    assert_problem(admin_change, 409, "builtin_role").await;
    let forced = delete("/v1/authz/roles/billing-reader?force=true")
        .await
        .unwrap();
    assert_eq!(forced.status(), 204);
    let gone = revision(&forced);
    let binding_id = binding["id"].as_str().unwrap();
    assert_problem(
        app.through(
            Method::GET,
            &format!("/v1/authz/bindings/{binding_id}"),
            &admin,
        )
        .send()
        .await
        .unwrap(),
        404,
        "not_found",
    )
    .await;
    let check = json_of(
        app.through(Method::POST, "/v1/authz/check", &ann_token)
            .json(&json!({"permission": "billing.invoices:read", "at_least_revision": gone}))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(check["allowed"], false);
    assert_eq!(check["denial"], "not_granted");
}

#[tokio::test]
async fn listings_are_paged_by_cursor_without_gaps_or_repeats() {
    let app = app().await;
    let admin = app.admin("root@example.org").await;
    for i in 0..7 {
        let r = app
            .through(Method::POST, "/v1/authz/groups", &admin)
            .json(&json!({"name": format!("team-{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/authz/groups?limit=3&cursor={c}"),
            None => "/v1/authz/groups?limit=3".into(),
        };
        let page = json_of(
            app.through(Method::GET, &path, &admin)
                .send()
                .await
                .unwrap(),
            200,
        )
        .await;
        for group in page["items"].as_array().unwrap() {
            seen.push(group["name"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..7).map(|i| format!("team-{i}")).collect();
    assert_eq!(seen, expected);
    for bad in ["limit=0", "limit=201", "cursor=zz", "limit=x", "colour=red"] {
        let r = app
            .through(Method::GET, &format!("/v1/authz/groups?{bad}"), &admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{bad}");
    }
}

#[tokio::test]
async fn identitys_admin_api_asks_authz_and_a_grant_opens_it_at_once() {
    let app = app().await;
    let ann_token = app.signed_in("ann@example.org").await;
    let bob = app.register("bob@example.org").await;
    let bob_id = bob["id"].as_str().unwrap();
    let refused = app
        .through(Method::GET, "/v1/users", &ann_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        assert_problem(refused, 403, "forbidden").await["permission"],
        "users:read"
    );

    // An admin gives ann the right to manage bob's account alone.
    let admin = app.admin("root@example.org").await;
    let role = app
        .through(Method::POST, "/v1/authz/roles", &admin)
        .json(&json!({"name": "support", "permissions": ["users:read", "users:write"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(role.status(), 201);
    let ann = app.me(&ann_token).await.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    let bound = app
        .through(Method::POST, "/v1/authz/bindings", &admin)
        .json(&json!({"subject": format!("user:{ann}"), "role": "support",
                      "scope": format!("users:{bob_id}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(bound.status(), 201);
    let shown = loop {
        let r = app
            .through(Method::GET, &format!("/v1/users/{bob_id}"), &ann_token)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break r.json::<Value>().await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the grant took effect in identity within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(shown["email"], "bob@example.org");
    // Only bob's account: the list and other accounts stay closed.
    let listing = app
        .through(Method::GET, "/v1/users", &ann_token)
        .send()
        .await
        .unwrap();
    assert_problem(listing, 403, "forbidden").await;
    let disabled = json_of(
        app.through(
            Method::POST,
            &format!("/v1/users/{bob_id}/disable"),
            &ann_token,
        )
        .send()
        .await
        .unwrap(),
        200,
    )
    .await;
    assert_eq!(disabled["status"], "disabled");
    let login = app
        .auth_post(
            "/v1/auth/login",
            json!({"email": "bob@example.org", "password": PASSWORD}),
        )
        .await;
    assert_eq!(login.status(), 403, "a disabled account cannot sign in");
    let delete = app
        .through(Method::DELETE, &format!("/v1/users/{bob_id}"), &ann_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        assert_problem(delete, 403, "forbidden").await["permission"],
        "users:delete"
    );

    // The admin lists, filters and pages users.
    let page = json_of(
        app.through(
            Method::GET,
            "/v1/users?email_prefix=BOB@&status=disabled",
            &admin,
        )
        .send()
        .await
        .unwrap(),
        200,
    )
    .await;
    let emails: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["bob@example.org"]);
    let first = json_of(
        app.through(Method::GET, "/v1/users?limit=2", &admin)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let next = first["next_cursor"].as_str().unwrap();
    let rest = json_of(
        app.through(
            Method::GET,
            &format!("/v1/users?limit=2&cursor={next}"),
            &admin,
        )
        .send()
        .await
        .unwrap(),
        200,
    )
    .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest.get("next_cursor").is_none());
    let notices = app.notices();
    let reset = app
        .through(
            Method::POST,
            &format!("/v1/users/{ann}/password-reset"),
            &admin,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 202);
    app.await_notices(notices + 1).await;
    assert!(
        app.last_token(
            gatehouse::identity::mail::notifier::NoticeKind::PasswordReset,
            "ann@example.org"
        )
        .is_some()
    );
    let gone = app
        .through(Method::DELETE, &format!("/v1/users/{bob_id}"), &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 204);
    let missing = app
        .through(Method::GET, &format!("/v1/users/{bob_id}"), &admin)
        .send()
        .await
        .unwrap();
    assert_problem(missing, 404, "user_not_found").await;
}

/// A stand-in upstream answering 200 `{"path": ...}` to anything.
async fn upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .fallback(|uri: http::Uri| async move { axum::Json(json!({"path": uri.path()})) });
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Polls `GET path` with `token` through the gateway until it answers
/// `status`; fails when that takes a second or more.
pub(crate) async fn within_a_second(
    app: &TestApp,
    path: &str,
    token: &str,
    status: u16,
) -> Duration {
    let started = Instant::now();
    loop {
        let r = app.through(Method::GET, path, token).send().await.unwrap();
        if r.status().as_u16() == status {
            return started.elapsed();
        }
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(1),
            "{path} still answered {} after {waited:?}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_route_permission_is_checked_at_the_edge_and_follows_grants_and_removals() {
    let (app, admin, ann_token, ann) = billing_app(60_000).await;
    let refused = app
        .through(Method::GET, "/billing/invoices/7", &ann_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        assert_problem(refused, 403, "forbidden").await["permission"],
        "billing.invoices:read"
    );

    // A binding on invoice 7 alone: 7 opens (though the refusal was kept
    // for a minute), 8 stays closed.
    let role = app
        .through(Method::POST, "/v1/authz/roles", &admin)
        .json(&json!({"name": "reader", "permissions": ["billing.invoices:read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(role.status(), 201);
    let bound = json_of(
        app.through(Method::POST, "/v1/authz/bindings", &admin)
            .json(&json!({"subject": format!("user:{ann}"), "role": "reader",
                          "scope": "billing.invoices:7"}))
            .send()
            .await
            .unwrap(),
        201,
    )
    .await;
    within_a_second(&app, "/billing/invoices/7", &ann_token, 200).await;
    let other = app
        .through(Method::GET, "/billing/invoices/8", &ann_token)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);

    // Removing the binding closes it again, kept answer or not.
    let binding_id = bound["id"].as_str().unwrap();
    let removed = app
        .through(
            Method::DELETE,
            &format!("/v1/authz/bindings/{binding_id}"),
            &admin,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 204);
    within_a_second(&app, "/billing/invoices/7", &ann_token, 403).await;

    // Config that cannot work is refused at startup.
    for (permission, auth) in [
        ("billing.invoices", AuthPolicy::Required),
        ("billing.invoices:*", AuthPolicy::Required),
        ("billing.invoices:read", AuthPolicy::Optional),
    ] {
        let mut route = billing_route();
        route.auth = auth;
        route.rules[0]
            .methods
            .insert("GET".into(), permission.into());
        assert!(
            gatehouse::gateway::routes::RouteTable::new(&[route]).is_err(),
            "{permission}"
        );
    }
}

/// The app with authz and the billing route (authz's answers kept
/// `keep_ms`), its upstream registered: with the admin's token, and Ann's
/// token and id.
async fn billing_app(keep_ms: u64) -> (TestApp, String, String, String) {
    let app = TestApp::builder()
        .with_authz()
        .permission_cache_ms(keep_ms)
        .gateway(|g| g.routes.push(billing_route()))
        .start()
        .await;
    app.register_instance("billing", upstream().await).await;
    let admin = app.admin("root@example.org").await;
    let ann_token = app.signed_in("ann@example.org").await;
    let ann = id_of(&app, &ann_token).await;
    (app, admin, ann_token, ann)
}

/// The billing route of docs/gateway.md: reading an invoice needs read on
/// it, writing it write on it, and nothing else under /billing is let by.
fn billing_route() -> RouteConfig {
    let rule: gatehouse::gateway::config::RouteRule = from_toml(
        r#"
        path = "/billing/invoices/{id}"
        GET = "billing.invoices:read"
        POST = "billing.invoices:write"
        resource = "billing.invoices:{id}"
        "#,
    );
    RouteConfig {
        rules: vec![rule],
        ..RouteConfig::new("/billing", "billing", AuthPolicy::Required)
    }
}

/// A kept answer lives no longer than the binding behind it: at its
/// expiry, the gateway refuses at once, though answers are kept a minute.
#[tokio::test]
async fn a_kept_allowance_ends_with_its_binding() {
    let (app, admin, ann_token, ann) = billing_app(60_000).await;
    let role = app
        .through(Method::POST, "/v1/authz/roles", &admin)
        .json(&json!({"name": "reader", "permissions": ["billing.invoices:read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(role.status(), 201);
    let ends = app.clock.now() + chrono::Duration::seconds(30);
    let bound = app
        .through(Method::POST, "/v1/authz/bindings", &admin)
        .json(&json!({"subject": format!("user:{ann}"), "role": "reader",
                      "scope": "billing.invoices:7", "expires_at": ends.to_rfc3339()}))
        .send()
        .await
        .unwrap();
    assert_eq!(bound.status(), 201);
    within_a_second(&app, "/billing/invoices/7", &ann_token, 200).await;
    // Kept, and still good a moment before the end.
    app.clock.advance(chrono::Duration::seconds(29));
    let r = app
        .through(Method::GET, "/billing/invoices/7", &ann_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // At the end, the kept answer is no answer.
    app.clock.advance(chrono::Duration::seconds(1));
    let r = app
        .through(Method::GET, "/billing/invoices/7", &ann_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// A user holding only read on one invoice reaches that invoice, and no
/// other path of the route, nor the invoice with another method; a config
/// with the single-segment setting rules replaced is refused, naming them.
#[tokio::test]
async fn a_route_with_rules_lets_through_only_what_a_rule_covers() {
    let (app, admin, ann_token, ann) = billing_app(5_000).await;
    let role = app
        .through(Method::POST, "/v1/authz/roles", &admin)
        .json(&json!({"name": "reader", "permissions": ["billing.invoices:read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(role.status(), 201);
    let bound = app
        .through(Method::POST, "/v1/authz/bindings", &admin)
        .json(&json!({"subject": format!("user:{ann}"), "role": "reader",
                      "scope": "billing.invoices:42"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bound.status(), 201);
    within_a_second(&app, "/billing/invoices/42", &ann_token, 200).await;

    for (method, path) in [
        (Method::GET, "/billing/admin/42"),
        (Method::GET, "/billing/customers/42"),
        (Method::GET, "/billing/secrets/42/dump"),
        (Method::POST, "/billing/invoices/42"),
        (Method::POST, "/billing/refunds/42"),
    ] {
        let r = app
            .through(method.clone(), path, &ann_token)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_problem(r, 403, "forbidden").await;
    }
    // The write the rule names is asked as such.
    let write = app
        .through(Method::POST, "/billing/invoices/42", &ann_token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        assert_problem(write, 403, "forbidden").await["permission"],
        "billing.invoices:write"
    );

    for removed in [
        "permission = \"billing.invoices:read\"",
        "resource_segment = 3",
    ] {
        let route: RouteConfig = from_toml(&format!(
            "prefix = \"/billing\"\nservice = \"billing\"\n{removed}\n"
        ));
        let e = gatehouse::gateway::routes::RouteTable::new(&[route])
            .unwrap_err()
            .to_string();
        assert!(e.contains("[[gateway.routes.rules]]"), "{e}");
    }
}

/// `text` read as the config file reads it.
pub(crate) fn from_toml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    use figment::providers::Format as _;
    figment::Figment::from(figment::providers::Toml::string(text))
        .extract()
        .unwrap()
}

/// Makes `name` with `permissions` and binds it to `user` everywhere, as
/// the admin whose token is `admin`.
async fn give(app: &TestApp, admin: &str, user: &str, name: &str, permissions: &[&str]) {
    let r = app
        .through(Method::POST, "/v1/authz/roles", admin)
        .json(&json!({"name": name, "permissions": permissions}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = app
        .through(Method::POST, "/v1/authz/bindings", admin)
        .json(&json!({"subject": format!("user:{user}"), "role": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

async fn id_of(app: &TestApp, token: &str) -> String {
    app.me(token).await.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// No escalation: a user holding only `authz:write` cannot bind `admin` to
/// themself, join a group that holds it, or add `*` to a role; they may
/// bind what they hold, and `authz:bind` lets them bind more. A helpdesk
/// user with `users:write` cannot disable or rename root, and may a user
/// who holds no more than they do.
#[tokio::test]
async fn changes_that_give_more_than_their_maker_holds_are_refused() {
    let app = app().await;
    let root = app.admin("root@example.org").await;
    let root_id = id_of(&app, &root).await;
    let eve = app.signed_in("eve@example.org").await;
    let eve_id = id_of(&app, &eve).await;
    give(
        &app,
        &root,
        &eve_id,
        "policy-writer",
        &["authz:write", "authz:read"],
    )
    .await;

    let refused = app
        .through(Method::POST, "/v1/authz/bindings", &eve)
        .json(&json!({"subject": format!("user:{eve_id}"), "role": "admin"}))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(refused, 403, "forbidden").await;
    assert_eq!(problem["permission"], "*", "{problem}");
    // A role whose permissions she holds, she may bind.
    let r = app
        .through(Method::POST, "/v1/authz/bindings", &eve)
        .json(
            &json!({"subject": format!("user:{eve_id}"), "role": "policy-writer",
                      "scope": "projects:1"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Nor through a group that holds admin.
    let group = json_of(
        app.through(Method::POST, "/v1/authz/groups", &root)
            .json(&json!({"name": "operators"}))
            .send()
            .await
            .unwrap(),
        201,
    )
    .await;
    let group_id = group["id"].as_str().unwrap();
    let r = app
        .through(Method::POST, "/v1/authz/bindings", &root)
        .json(&json!({"subject": format!("group:{group_id}"), "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = app
        .through(
            Method::POST,
            &format!("/v1/authz/groups/{group_id}/members"),
            &eve,
        )
        .json(&json!({"member": format!("user:{eve_id}")}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 403, "forbidden").await;
    // Nor by adding `*` to a role she holds.
    let r = app
        .through(Method::PATCH, "/v1/authz/roles/policy-writer", &eve)
        .json(&json!({"permissions": ["authz:write", "authz:read", "*"]}))
        .send()
        .await
        .unwrap();
    assert_problem(r, 403, "forbidden").await;
    // `authz:bind` lets its holder bind beyond what they hold.
    give(&app, &root, &eve_id, "binder", &["authz:bind"]).await;
    let r = app
        .through(Method::POST, "/v1/authz/bindings", &eve)
        .json(
            &json!({"subject": format!("user:{eve_id}"), "role": "admin",
                      "scope": "projects:2"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // The helpdesk: users:write, no more.
    let desk = app.signed_in("desk@example.org").await;
    let desk_id = id_of(&app, &desk).await;
    give(
        &app,
        &root,
        &desk_id,
        "helpdesk",
        &["users:write", "users:read"],
    )
    .await;
    for (method, path, body) in [
        (
            Method::POST,
            format!("/v1/users/{root_id}/disable"),
            json!({}),
        ),
        (
            Method::PATCH,
            format!("/v1/users/{root_id}"),
            json!({"display_name": "Not root"}),
        ),
        (
            Method::POST,
            format!("/v1/users/{root_id}/password-reset"),
            json!({}),
        ),
    ] {
        let r = app
            .through(method, &path, &desk)
            .json(&body)
            .send()
            .await
            .unwrap();
        let problem = assert_problem(r, 403, "forbidden").await;
        assert_eq!(problem["permission"], "*", "{path}: {problem}");
    }
    let root_now = app
        .through(Method::GET, &format!("/v1/users/{root_id}"), &desk)
        .send()
        .await
        .unwrap();
    let root_now = json_of(root_now, 200).await;
    assert_eq!(root_now["status"], "active");
    assert_ne!(root_now["display_name"], "Not root");
    // A user who holds no more than the helpdesk does: allowed.
    let plain = app.signed_in("plain@example.org").await;
    let plain_id = id_of(&app, &plain).await;
    let r = app
        .through(
            Method::POST,
            &format!("/v1/users/{plain_id}/disable"),
            &desk,
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
