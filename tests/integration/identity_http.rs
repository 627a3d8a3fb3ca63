//! Identity's public HTTP API as a client sees it.

use chrono::Duration;
use gatehouse::identity::mail::notifier::NoticeKind;
use prost::Message;
use serde_json::json;

use crate::support::{PASSWORD, TestApp, assert_problem};

#[tokio::test]
async fn registration_returns_the_user_and_never_a_secret() {
    let app = TestApp::start().await;
    let r = app
        .post(
            "/v1/users",
            json!({"email": "Ann@Example.org", "password": PASSWORD, "display_name": " Ann "}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(r.headers()["etag"], "\"1\"");
    let text = r.text().await.unwrap();
    assert!(!text.contains(PASSWORD) && !text.contains("scrypt") && !text.contains("hash"));
    let user: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        location,
        format!("/v1/users/{}", user["id"].as_str().unwrap())
    );
    let id = uuid::Uuid::parse_str(user["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(user["email"], "Ann@Example.org");
    assert_eq!(user["display_name"], "Ann");
    assert_eq!(user["status"], "active");
    assert_eq!(user["email_verified"], false);
    assert_eq!(user["version"], 1);
    assert!(user["created_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn registration_writes_an_event_without_secrets() {
    let app = TestApp::start().await;
    let mut events = app.identity_events().await;
    let user = app.register("ev@example.org").await;
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
        .await
        .expect("event within 5 s")
        .unwrap()
        .event;
    assert_eq!(event.r#type, "identity.user.registered");
    assert_eq!(event.source, "identity");
    assert_eq!(event.subject, user["id"].as_str().unwrap());
    let payload = gatehouse::proto::events::v1::UserEvent::decode(&event.payload[..]).unwrap();
    assert_eq!(payload.user_id, event.subject);
    assert_eq!(payload.email, "ev@example.org");
    let raw = String::from_utf8_lossy(&event.payload);
    assert!(!raw.contains(PASSWORD) && !raw.contains("scrypt"));
}

#[tokio::test]
async fn a_taken_email_is_409_whatever_its_case() {
    let app = TestApp::start().await;
    app.register("dup@example.org").await;
    let r = app
        .post(
            "/v1/users",
            json!({"email": "DUP@example.ORG", "password": PASSWORD, "display_name": "Other"}),
        )
        .await;
    assert_problem(r, 409, "email_taken").await;
}

#[tokio::test]
async fn concurrent_registrations_of_one_email_create_one_user() {
    let app = TestApp::start().await;
    let mut calls = Vec::new();
    for i in 0..8 {
        let http = app.http.clone();
        let url = format!("{}/v1/users", app.base);
        calls.push(tokio::spawn(async move {
            http.post(url)
                .json(&json!({"email": "race@example.org", "password": PASSWORD, "display_name": format!("R{i}")}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn bad_registrations_get_clear_problems_and_change_nothing() {
    let app = TestApp::builder()
        .identity(|c| c.password.min_length = 12)
        .start()
        .await;
    let url = format!("{}/v1/users", app.base);
    let raw = |body: &'static str| {
        app.http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_problem(raw("{\"email\": ").await.unwrap(), 400, "malformed_json").await;
    assert_problem(raw("[]").await.unwrap(), 422, "invalid_body").await;
    let missing = assert_problem(
        raw(r#"{"email":"a@example.org","password":"long enough password"}"#)
            .await
            .unwrap(),
        422,
        "invalid_body",
    )
    .await;
    assert!(
        missing["detail"].as_str().unwrap().contains("display_name"),
        "{missing}"
    );
    let unknown = assert_problem(
        raw(r#"{"email":"a@example.org","password":"long enough password","display_name":"A","admin":true}"#)
            .await
            .unwrap(),
        422,
        "invalid_body",
    )
    .await;
    assert!(
        unknown["detail"].as_str().unwrap().contains("admin"),
        "{unknown}"
    );

    let no_type = app.http.post(&url).body("{}").send().await.unwrap();
    assert_problem(no_type, 415, "unsupported_media_type").await;

    let cases = [
        (
            json!({"email": "not-an-email", "password": PASSWORD, "display_name": "A"}),
            "email",
        ),
        (
            json!({"email": format!("{}@example.org", "a".repeat(300)), "password": PASSWORD, "display_name": "A"}),
            "email",
        ),
        (
            json!({"email": "a@example.org", "password": "short", "display_name": "A"}),
            "password",
        ),
        (
            json!({"email": "a@example.org", "password": "x".repeat(2000), "display_name": "A"}),
            "password",
        ),
        (
            json!({"email": "a@example.org", "password": PASSWORD, "display_name": "n".repeat(101)}),
            "display_name",
        ),
        (
            json!({"email": "a@example.org", "password": PASSWORD, "display_name": "   "}),
            "display_name",
        ),
    ];
    for (body, field) in cases {
        let p = assert_problem(app.post("/v1/users", body).await, 422, "validation_failed").await;
        assert_eq!(p["field"], field, "{p}");
    }

    let huge = json!({"email": "a@example.org", "password": PASSWORD, "display_name": "x".repeat(100_000)});
    assert_problem(app.post("/v1/users", huge).await, 413, "payload_too_large").await;

    // None of the above left anything behind: the address is still free.
    assert_eq!(app.notices(), 0);
    app.register("a@example.org").await;
}

#[tokio::test]
async fn registration_can_be_closed() {
    let app = TestApp::builder()
        .identity(|c| c.registration_enabled = false)
        .start()
        .await;
    let r = app
        .post(
            "/v1/users",
            json!({"email": "x@example.org", "password": PASSWORD, "display_name": "X"}),
        )
        .await;
    assert_problem(r, 403, "registration_closed").await;
}

#[tokio::test]
async fn password_reset_works_once_and_expires() {
    let app = TestApp::start().await;
    app.register("reset@example.org").await;
    let before = app.notices();

    // Unknown and known addresses get the same answer; only one gets a link.
    let r = app
        .post(
            "/v1/password-resets",
            json!({"email": "nobody@example.org"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let r = app
        .post("/v1/password-resets", json!({"email": "RESET@example.org"}))
        .await;
    assert_eq!(r.status(), 202);
    // Links go out in the order asked for: once the second is out, the
    // first would have been too.
    app.await_notices(before + 1).await;
    assert_eq!(app.notices(), before + 1);
    let token = app
        .last_token(NoticeKind::PasswordReset, "reset@example.org")
        .unwrap();

    let new_password = "a brand new passphrase";
    let r = app
        .post(
            "/v1/password-resets/confirm",
            json!({"token": token, "new_password": "short"}),
        )
        .await;
    assert_problem(r, 422, "validation_failed").await;
    let r = app
        .post(
            "/v1/password-resets/confirm",
            json!({"token": token, "new_password": new_password}),
        )
        .await;
    assert_eq!(r.status(), 204);

    let mut grpc = app.grpc().await;
    let ok = grpc
        .verify_credentials(gatehouse::proto::identity::v1::VerifyCredentialsRequest {
            device_token: String::new(),
            email: "reset@example.org".into(),
            password: new_password.into(),
        })
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    let old = grpc
        .verify_credentials(gatehouse::proto::identity::v1::VerifyCredentialsRequest {
            device_token: String::new(),
            email: "reset@example.org".into(),
            password: PASSWORD.into(),
        })
        .await;
    assert_eq!(old.unwrap_err().code(), tonic::Code::Unauthenticated);

    // Used once: a second use fails.
    let r = app
        .post(
            "/v1/password-resets/confirm",
            json!({"token": token, "new_password": "yet another passphrase"}),
        )
        .await;
    assert_problem(r, 400, "invalid_token").await;

    // A fresh token expires after its lifetime.
    let before = app.notices();
    app.post("/v1/password-resets", json!({"email": "reset@example.org"}))
        .await;
    app.await_notices(before + 1).await;
    let token = app
        .last_token(NoticeKind::PasswordReset, "reset@example.org")
        .unwrap();
    app.clock.advance(Duration::seconds(3601));
    let r = app
        .post(
            "/v1/password-resets/confirm",
            json!({"token": token, "new_password": "yet another passphrase"}),
        )
        .await;
    assert_problem(r, 400, "invalid_token").await;

    let r = app
        .post(
            "/v1/password-resets/confirm",
            json!({"token": "made-up", "new_password": "yet another passphrase"}),
        )
        .await;
    assert_problem(r, 400, "invalid_token").await;
}

#[tokio::test]
async fn asking_for_a_link_is_answered_alike_whether_or_not_the_address_has_an_account() {
    let app = TestApp::start().await;
    app.register("held@example.org").await;
    let before = app.notices();
    // Delivery stalls: an answer that waited on the account's own work (the
    // lookup, the token, the notice) would not come; none does.
    let held = app.notifier.held.lock().await;
    for (path, email) in [
        ("/v1/password-resets", "held@example.org"),
        ("/v1/password-resets", "nobody@example.org"),
        ("/v1/email-verifications", "held@example.org"),
        ("/v1/email-verifications", "nobody@example.org"),
    ] {
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            app.post(path, json!({ "email": email })),
        )
        .await
        .unwrap_or_else(|_| panic!("{path} for {email} waited for the delivery"));
        assert_eq!(r.status(), 202);
        assert!(r.bytes().await.unwrap().is_empty());
    }
    assert_eq!(app.notices(), before);
    drop(held);
    // Then the links go out: one reset and one verification, both to the account.
    app.await_notices(before + 2).await;
    assert!(
        app.last_token(NoticeKind::PasswordReset, "held@example.org")
            .is_some()
    );
}

#[tokio::test]
async fn a_newer_reset_link_retires_the_older_one() {
    let app = TestApp::start().await;
    app.register("two@example.org").await;
    let before = app.notices();
    app.post("/v1/password-resets", json!({"email": "two@example.org"}))
        .await;
    app.await_notices(before + 1).await;
    let first = app
        .last_token(NoticeKind::PasswordReset, "two@example.org")
        .unwrap();
    app.post("/v1/password-resets", json!({"email": "two@example.org"}))
        .await;
    app.await_notices(before + 2).await;
    let second = app
        .last_token(NoticeKind::PasswordReset, "two@example.org")
        .unwrap();
    assert_ne!(first, second);
    let r = app
        .post(
            "/v1/password-resets/confirm",
            json!({"token": first, "new_password": "a brand new passphrase"}),
        )
        .await;
    assert_problem(r, 400, "invalid_token").await;
    let r = app
        .post(
            "/v1/password-resets/confirm",
            json!({"token": second, "new_password": "a brand new passphrase"}),
        )
        .await;
    assert_eq!(r.status(), 204);
}

/// Asks for a reset link for `email` and answers its token.
async fn reset_link(app: &TestApp, email: &str) -> String {
    let before = app.notices();
    let r = app
        .post("/v1/password-resets", json!({ "email": email }))
        .await;
    assert_eq!(r.status(), 202);
    app.await_notices(before + 1).await;
    app.last_token(NoticeKind::PasswordReset, email).unwrap()
}

/// A reset link outlives neither a password change nor a disabled
/// account, and one address is sent its allowance of links however often
/// they are asked for, with the same answer each time.
#[tokio::test]
async fn reset_links_end_with_a_password_change_or_a_disabled_account_and_are_rationed() {
    let app = TestApp::start().await;
    let user = app.register("ends@example.org").await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    let confirm = |token: String, password: &'static str| {
        let app = &app;
        async move {
            app.post(
                "/v1/password-resets/confirm",
                json!({"token": token, "new_password": password}),
            )
            .await
        }
    };

    // Issued before a password change: refused after it.
    let before_change = reset_link(&app, "ends@example.org").await;
    let pair = app.login("ends@example.org", PASSWORD).await;
    let token = pair["access_token"].as_str().unwrap().to_owned();
    let changed = app
        .with_token(
            reqwest::Method::POST,
            format!("{}/v1/users/me/password", app.base),
            &token,
        )
        .json(&json!({"current_password": PASSWORD, "new_password": "a changed passphrase"}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 204);
    let r = confirm(before_change, "an attacker's passphrase").await;
    assert_problem(r, 400, "invalid_token").await;

    // Issued while active, confirmed while disabled: refused, and the
    // account's password is the one it had once it is enabled again.
    let before_disable = reset_link(&app, "ends@example.org").await;
    let mut grpc = app.grpc().await;
    let status = |status: &str| gatehouse::proto::identity::v1::SetStatusRequest {
        id: user_id.clone(),
        status: status.into(),
    };
    grpc.set_status(status("disabled")).await.unwrap();
    let r = confirm(before_disable, "an attacker's passphrase").await;
    assert_problem(r, 400, "invalid_token").await;
    grpc.set_status(status("active")).await.unwrap();
    let login = |password: &str| gatehouse::proto::identity::v1::VerifyCredentialsRequest {
        device_token: String::new(),
        email: "ends@example.org".into(),
        password: password.into(),
    };
    assert!(
        grpc.verify_credentials(login("an attacker's passphrase"))
            .await
            .is_err()
    );
    grpc.verify_credentials(login("a changed passphrase"))
        .await
        .unwrap();

    // Two links of its three in the window are spent: of a hundred more
    // requests, answered alike, one sends a link.
    let sent_to = |email: &str| {
        app.notifier
            .sent
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n.kind == NoticeKind::PasswordReset && n.email == email)
            .count()
    };
    for _ in 0..100 {
        let r = app
            .post("/v1/password-resets", json!({"email": "ends@example.org"}))
            .await;
        assert_eq!(r.status(), 202);
    }
    // A link asked for after them goes out once they have been worked.
    let before = app.notices();
    app.register("late@example.org").await;
    reset_link(&app, "late@example.org").await;
    assert!(app.notices() > before);
    assert_eq!(sent_to("ends@example.org"), 3);
}

/// Text that reads otherwise than it is, refused or made plain: a
/// full-width address is the address it looks like, names cannot turn or
/// hide their text, and quoted or IP-literal addresses are refused.
#[tokio::test]
async fn deceptive_names_and_addresses_are_refused_or_normalised() {
    let app = TestApp::start().await;
    app.register("root@example.org").await;
    let twin = app
        .post(
            "/v1/users",
            json!({"email": "\u{ff52}oot@example.org", "password": PASSWORD, "display_name": "Twin"}),
        )
        .await;
    assert_problem(twin, 409, "email_taken").await;
    let pair = app.login("\u{ff52}\u{ff4f}ot@example.org", PASSWORD).await;
    assert!(pair["access_token"].is_string(), "{pair}");
    for (email, name) in [
        ("\"root\"@example.org", "Quoted"),
        ("root@[127.0.0.1]", "Literal"),
        ("mallory@example.org", "Ann\u{202e}nimdA"),
        ("mallory@example.org", "Ad\u{200b}min"),
        ("mallory@example.org", "Admin\u{e0041}"),
        ("mallory@example.org", "Ann\u{2028}Admin"),
    ] {
        let r = app
            .post(
                "/v1/users",
                json!({"email": email, "password": PASSWORD, "display_name": name}),
            )
            .await;
        let problem = assert_problem(r, 422, "validation_failed").await;
        assert!(
            problem["field"] == "email" || problem["field"] == "display_name",
            "{problem}"
        );
    }
}

/// With `conceal_existing_accounts`, registering a new address and one
/// that has an account get the same answer; the account's owner is told by
/// mail, and the account is as it was.
#[tokio::test]
async fn registration_can_conceal_which_addresses_have_accounts() {
    let app = TestApp::builder()
        .identity(|c| c.conceal_existing_accounts = true)
        .start()
        .await;
    let register = |email: &'static str, password: &'static str| {
        let app = &app;
        async move {
            let r = app
                .post(
                    "/v1/users",
                    json!({"email": email, "password": password, "display_name": "C"}),
                )
                .await;
            let status = r.status().as_u16();
            let mut headers: Vec<String> = r
                .headers()
                .keys()
                .filter(|k| !matches!(k.as_str(), "date" | "x-request-id"))
                .map(ToString::to_string)
                .collect();
            headers.sort();
            (status, headers, r.bytes().await.unwrap())
        }
    };
    let new = register("held@example.org", PASSWORD).await;
    app.await_token(NoticeKind::EmailVerification, "held@example.org")
        .await;
    let before = app.notices();
    let taken = register("HELD@example.org", "another passphrase here").await;
    assert_eq!(new, taken);
    assert_eq!(new.0, 202);
    assert!(new.2.is_empty());
    // The owner is told, with no token in the link; the account keeps its
    // password.
    app.await_notices(before + 1).await;
    let told = app.notifier.sent.lock().unwrap().last().cloned().unwrap();
    assert_eq!(told.kind, NoticeKind::AccountExists);
    assert_eq!(told.email, "held@example.org");
    assert!(
        told.token.is_empty() && !told.link.contains("token"),
        "{}",
        told.link
    );
    let pair = app.login("held@example.org", PASSWORD).await;
    assert!(pair["access_token"].is_string(), "{pair}");
    let r = app
        .auth_post(
            "/v1/auth/login",
            json!({"email": "held@example.org", "password": "another passphrase here"}),
        )
        .await;
    assert_problem(r, 401, "invalid_credentials").await;
}

#[tokio::test]
async fn email_verification_marks_the_user_once() {
    let app = TestApp::start().await;
    app.register("verify@example.org").await;
    let token = app
        .last_token(NoticeKind::EmailVerification, "verify@example.org")
        .unwrap();
    let r = app
        .post("/v1/email-verifications/confirm", json!({"token": token}))
        .await;
    assert_eq!(r.status(), 200);
    let user: serde_json::Value = r.json().await.unwrap();
    assert_eq!(user["email_verified"], true);
    assert_eq!(user["version"], 2);
    let again = app
        .post("/v1/email-verifications/confirm", json!({"token": token}))
        .await;
    assert_problem(again, 400, "invalid_token").await;

    // Already verified: asking again sends nothing. A link asked for
    // after it, for an account that may have one, goes out after it.
    app.register("other@example.org").await;
    let before = app.notices();
    let r = app
        .post(
            "/v1/email-verifications",
            json!({"email": "verify@example.org"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    app.post(
        "/v1/email-verifications",
        json!({"email": "other@example.org"}),
    )
    .await;
    app.await_notices(before + 1).await;
    assert_eq!(app.notices(), before + 1);
}

#[tokio::test]
async fn verification_can_be_requested_again_and_expires() {
    let app = TestApp::start().await;
    app.register("late@example.org").await;
    app.clock.advance(Duration::days(2));
    let old = app
        .last_token(NoticeKind::EmailVerification, "late@example.org")
        .unwrap();
    let r = app
        .post("/v1/email-verifications/confirm", json!({"token": old}))
        .await;
    assert_problem(r, 400, "invalid_token").await;
    let r = app
        .post(
            "/v1/email-verifications",
            json!({"email": "late@example.org"}),
        )
        .await;
    assert_eq!(r.status(), 202);
    app.await_notices(2).await;
    let fresh = app
        .last_token(NoticeKind::EmailVerification, "late@example.org")
        .unwrap();
    assert_ne!(old, fresh);
    let r = app
        .post("/v1/email-verifications/confirm", json!({"token": fresh}))
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn only_json_objects_pass_and_wrong_methods_are_problems_too() {
    let app = TestApp::start().await;
    app.register("shape@example.org").await;
    // An array of the fields in order is not a body of them.
    let r = app
        .auth_post("/v1/auth/login", json!(["shape@example.org", PASSWORD]))
        .await;
    assert_problem(r, 422, "invalid_body").await;
    let r = app
        .post("/v1/users", json!(["x@example.org", PASSWORD, "X"]))
        .await;
    assert_problem(r, 422, "invalid_body").await;
    let pair = app.login("shape@example.org", PASSWORD).await;
    let token = pair["access_token"].as_str().unwrap().to_owned();
    for body in [json!([null, null]), json!("text"), json!(7)] {
        let r = app
            .with_token(
                reqwest::Method::PATCH,
                format!("{}/v1/users/me", app.base),
                &token,
            )
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_problem(r, 422, "invalid_body").await;
    }
    // A problem about a new password names the field it came in.
    let r = app
        .with_token(
            reqwest::Method::POST,
            format!("{}/v1/users/me/password", app.base),
            &token,
        )
        .json(&json!({"current_password": PASSWORD, "new_password": "short"}))
        .send()
        .await
        .unwrap();
    let p = assert_problem(r, 422, "validation_failed").await;
    assert_eq!(p["field"], "new_password", "{p}");
    // A method the route does not take: a problem, with what it takes.
    for (base, path, allowed) in [
        (&app.base, "/v1/users", "POST,GET,HEAD"),
        (&app.auth_base, "/v1/auth/login", "POST"),
        (&app.gateway_base, "/v1/users", "POST,GET,HEAD"),
    ] {
        let r = app.http.put(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.headers()["allow"], allowed, "{base}{path}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{base}{path}"
        );
        assert_problem(r, 405, "method_not_allowed").await;
    }
}

/// A link asked for while another connection holds identity's write lock,
/// and commits a change meanwhile, still goes out once the lock is free:
/// the link's transaction waits its turn for the lock instead of failing
/// on the change it did not see, and its event shows it saw that change.
#[cfg(not(feature = "it-postgres"))]
#[tokio::test]
async fn a_link_asked_for_while_the_database_is_busy_still_goes_out() {
    use diesel::{Connection, RunQueryDsl};
    let app = TestApp::start().await;
    app.register("busy@example.org").await;
    let before = app.notices();
    let mut events = app.identity_events().await;
    let path = app.ctx.data_dir.join("identity.db");
    let mut other = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    diesel::sql_query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .unwrap();
    diesel::sql_query(
        "UPDATE users SET display_name = 'Changed' WHERE email_normalized = 'busy@example.org'",
    )
    .execute(&mut other)
    .unwrap();
    let r = app
        .post("/v1/password-resets", json!({"email": "busy@example.org"}))
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        app.notices(),
        before,
        "nothing goes out while the lock is held"
    );
    diesel::sql_query("COMMIT").execute(&mut other).unwrap();
    // The link's own event, written in the link's transaction, shows the
    // row as the other connection committed it: the link was worked only
    // once the lock was free, so nothing went out before.
    let requested = loop {
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
            .await
            .expect("the link's event within 5 s")
            .unwrap()
            .event;
        if event.r#type == "identity.password.reset_requested" {
            break event;
        }
    };
    let payload = gatehouse::proto::events::v1::UserEvent::decode(&requested.payload[..]).unwrap();
    assert_eq!(payload.display_name, "Changed");
    app.await_notices(before + 1).await;
    assert!(
        app.last_token(NoticeKind::PasswordReset, "busy@example.org")
            .is_some()
    );
}

/// Each event names the request that caused it: the client's address as
/// the gateway saw it, the request id, the trace, and the signed-in user.
#[tokio::test]
async fn events_carry_the_client_request_trace_and_user_that_caused_them() {
    let app = TestApp::start().await;
    let mut events = app.identity_events().await;
    // Another loopback address than the gateway's own, so the two differ.
    let client = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = client
        .post(format!("{}/v1/users", app.gateway_base))
        .header("x-request-id", "register-1")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!({"email": "origin@example.org", "password": PASSWORD, "display_name": "O"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut next = async || {
        tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
            .await
            .expect("event within 5 s")
            .unwrap()
            .event
    };
    let registered = next().await;
    assert_eq!(registered.r#type, "identity.user.registered");
    assert_eq!(registered.actor, "", "nobody was signed in");
    assert_eq!(registered.client_ip, "127.0.0.2");
    assert_eq!(registered.request_id, "register-1");
    assert_eq!(registered.trace_id, trace);

    let token = app.login("origin@example.org", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = client
        .patch(format!("{}/v1/users/me", app.gateway_base))
        .bearer_auth(&token)
        .header("x-request-id", "rename-1")
        .json(&json!({"display_name": "Renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let updated = next().await;
    assert_eq!(updated.r#type, "identity.user.updated");
    assert_eq!(updated.actor, format!("user:{}", registered.subject));
    assert_eq!(updated.client_ip, "127.0.0.2");
    assert_eq!(updated.request_id, "rename-1");
    assert_eq!(updated.trace_id, "", "no trace was sent");

    // Straight to identity's port, from loopback, a request's own
    // `Forwarded` is not believed: only the gateway's credential vouches
    // for one (and a client's credential field goes nowhere through it).
    let r = client
        .post(format!("{}/v1/users", app.base))
        .header("forwarded", "for=7.7.7.7")
        .json(&json!({"email": "direct@example.org", "password": PASSWORD, "display_name": "D"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let direct = next().await;
    assert_eq!(direct.r#type, "identity.user.registered");
    assert_eq!(direct.client_ip, "127.0.0.2");
    let r = client
        .post(format!("{}/v1/users", app.gateway_base))
        .header("forwarded", "for=7.7.7.7")
        .header("x-forwarded-for", "7.7.7.7")
        .header("gatehouse-service-token", "v4.public.forged")
        .json(&json!({"email": "through@example.org", "password": PASSWORD, "display_name": "T"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(next().await.client_ip, "127.0.0.2");
}
