//! Auth as a client sees it: login through identity, refresh rotation with
//! reuse detection, logout, sessions, keys, and the shared token check in
//! front of identity's `/v1/users/me`.

use std::time::Duration as StdDuration;

use chrono::Duration;
use gatehouse::kernel::clock::Clock as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{PASSWORD, TestApp, assert_problem, send};

async fn signed_up(app: &TestApp, email: &str) -> Value {
    app.register(email).await;
    app.login(email, PASSWORD).await
}

fn access(pair: &Value) -> String {
    pair["access_token"].as_str().unwrap().to_owned()
}

fn refresh_token(pair: &Value) -> String {
    pair["refresh_token"].as_str().unwrap().to_owned()
}

/// Presents a refresh token to auth.
async fn refresh(app: &TestApp, token: &str) -> reqwest::Response {
    app.auth_post("/v1/auth/refresh", json!({"refresh_token": token}))
        .await
}

/// Logs the session of `token` out at auth.
async fn logout(app: &TestApp, token: &str) -> reqwest::Response {
    app.with_token(
        Method::POST,
        format!("{}/v1/auth/logout", app.auth_base),
        token,
    )
    .send()
    .await
    .unwrap()
}

/// Polls `/v1/users/me` until it answers `status`, for at most `within`.
async fn me_becomes(
    app: &TestApp,
    token: &str,
    status: u16,
    within: StdDuration,
) -> reqwest::Response {
    let deadline = std::time::Instant::now() + within;
    loop {
        let r = app.me(token).await;
        if r.status().as_u16() == status || std::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn login_gives_a_bearer_pair_that_reads_my_profile() {
    let app = TestApp::start().await;
    let user = app.register("ann@example.org").await;
    let pair = app.login("ANN@example.org", PASSWORD).await;
    assert_eq!(pair["token_type"], "Bearer");
    assert_eq!(pair["expires_in"], 900);
    assert!(access(&pair).starts_with("v4.public."));
    assert_eq!(refresh_token(&pair).len(), 64);

    let r = app.me(&access(&pair)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "\"1\"");
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["id"], user["id"]);
    assert_eq!(me["email"], "ann@example.org");
}

#[tokio::test]
async fn unknown_email_and_wrong_password_look_the_same() {
    let app = TestApp::start().await;
    app.register("ann@example.org").await;
    let wrong = app
        .auth_post(
            "/v1/auth/login",
            json!({"email": "ann@example.org", "password": "not the password"}),
        )
        .await;
    let unknown = app
        .auth_post(
            "/v1/auth/login",
            json!({"email": "bob@example.org", "password": PASSWORD}),
        )
        .await;
    let wrong = assert_problem(wrong, 401, "invalid_credentials").await;
    let unknown = assert_problem(unknown, 401, "invalid_credentials").await;
    assert_eq!(wrong, unknown);
    let r = app
        .auth_post("/v1/auth/login", json!({"email": "ann@example.org"}))
        .await;
    assert_problem(r, 422, "invalid_body").await;
}

#[tokio::test]
async fn too_many_failures_get_their_own_code_and_a_sign_in_a_device_token() {
    let app = TestApp::builder()
        .identity(|c| c.throttle.free_failures = 2)
        .start()
        .await;
    app.register("slow@example.org").await;
    for _ in 0..2 {
        let r = app
            .auth_post(
                "/v1/auth/login",
                json!({"email": "slow@example.org", "password": "wrong wrong"}),
            )
            .await;
        assert_problem(r, 401, "invalid_credentials").await;
    }
    let r = app
        .auth_post(
            "/v1/auth/login",
            json!({"email": "slow@example.org", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.headers()["retry-after"], "1");
    assert_problem(r, 429, "too_many_attempts").await;
    app.clock.advance(chrono::Duration::seconds(1));
    let pair = app.login("slow@example.org", PASSWORD).await;
    let device = pair["device_token"].as_str().unwrap().to_owned();
    // Held again by new failures, the owner's device signs in at once.
    for _ in 0..2 {
        app.auth_post(
            "/v1/auth/login",
            json!({"email": "slow@example.org", "password": "wrong wrong"}),
        )
        .await;
    }
    let r = app
        .auth_post(
            "/v1/auth/login",
            json!({"email": "slow@example.org", "password": PASSWORD, "device_token": device}),
        )
        .await;
    assert_eq!(r.status(), 200);
}

/// A client bound to the loopback address `127.0.x.y`.
fn from_address(x: u8, y: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, x, y]))
        .build()
        .unwrap()
}

/// The owner's sign-in from `client` with `password`, on the device that
/// holds `device` when given.
async fn sign_in(
    client: &reqwest::Client,
    app: &TestApp,
    password: &str,
    device: Option<&str>,
) -> reqwest::Response {
    let body = json!({"email": "owner@example.org", "password": password, "device_token": device});
    let url = format!("{}/v1/auth/login", app.auth_base);
    send(client, Method::POST, url, None, Some(body)).await
}

/// An attacker guesses at one account from 20 loopback addresses for an
/// hour on the injected clock, each address coming back the moment its
/// `Retry-After` allows: its guesses checked stay within the documented
/// bound (one per new address, `account_free_failures`, the doublings up to
/// `max_delay_ms`, then one a `max_delay_ms`), and throughout and after it
/// the owner signs in at once, on a device that signed in before and from a
/// new one elsewhere.
#[tokio::test]
async fn guessing_from_many_addresses_stays_bounded_and_the_owner_signs_in_at_once() {
    let app = TestApp::start().await;
    app.register("owner@example.org").await;
    let owner = from_address(3, 1);
    let first: Value = sign_in(&owner, &app, PASSWORD, None)
        .await
        .json()
        .await
        .unwrap();
    let device = first["device_token"].as_str().unwrap().to_owned();

    let attackers: Vec<reqwest::Client> = (1..=20).map(|y| from_address(2, y)).collect();
    let hour = 3600u64;
    let mut next = vec![0u64; attackers.len()];
    let (mut now, mut checked, mut held) = (0u64, 0u32, 0u32);
    loop {
        let (i, at) = next
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, at)| *at)
            .unwrap();
        if at >= hour {
            break;
        }
        if at > now {
            app.clock
                .advance(Duration::seconds(i64::try_from(at - now).unwrap()));
            now = at;
        }
        let r = sign_in(&attackers[i], &app, "a wrong guess", None).await;
        match r.status().as_u16() {
            401 => checked += 1,
            429 => {
                held += 1;
                let wait: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(wait >= 1);
                next[i] = now + wait;
            }
            other => panic!("an attacker's guess answered {other}"),
        }
        // Now and then, the owner signs in at once, both ways.
        if (checked + held) % 97 == 0 {
            let on_device = sign_in(&owner, &app, PASSWORD, Some(&device)).await;
            assert_eq!(on_device.status(), 200, "on a known device at {now} s");
            let elsewhere = from_address(4, u8::try_from(checked % 250).unwrap() + 1);
            let new_device = sign_in(&elsewhere, &app, PASSWORD, None).await;
            assert_eq!(new_device.status(), 200, "from a new device at {now} s");
        }
    }
    let throttle = gatehouse::identity::config::ThrottleConfig::default();
    let doublings = (throttle.max_delay_ms / throttle.first_delay_ms).ilog2() + 1;
    let bound = 20
        + throttle.account_free_failures
        + doublings
        + u32::try_from(hour * 1000 / throttle.max_delay_ms).unwrap();
    eprintln!(
        "an hour of guessing from 20 addresses: {checked} guesses checked (bound {bound}), {held} held"
    );
    assert!(checked <= bound, "{checked} guesses checked, over {bound}");
    assert!(checked > 20, "each address guessed");
    let on_device = sign_in(&owner, &app, PASSWORD, Some(&device)).await;
    assert_eq!(on_device.status(), 200);
    let new_device = sign_in(&from_address(5, 1), &app, PASSWORD, None).await;
    assert_eq!(new_device.status(), 200);
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_ends_the_session() {
    let app = TestApp::start().await;
    let first = signed_up(&app, "rot@example.org").await;
    let second: Value = refresh(&app, &refresh_token(&first))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(refresh_token(&second), refresh_token(&first));
    assert_ne!(access(&second), access(&first));
    assert_eq!(app.me(&access(&second)).await.status(), 200);

    // A client that lost the answer retries within the grace window: same pair.
    let retry: Value = refresh(&app, &refresh_token(&first))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(retry, second);

    // After the grace window the old token is a reuse: the session ends.
    app.clock.advance(Duration::seconds(6));
    let r = refresh(&app, &refresh_token(&first)).await;
    assert_problem(r, 401, "refresh_token_reused").await;
    let r = refresh(&app, &refresh_token(&second)).await;
    assert_problem(r, 401, "invalid_refresh_token").await;
    let r = me_becomes(&app, &access(&second), 401, StdDuration::from_secs(1)).await;
    assert_problem(r, 401, "session_revoked").await;
}

#[tokio::test]
async fn two_rotations_in_one_second_are_still_told_apart() {
    let app = TestApp::start().await;
    let a = signed_up(&app, "fast@example.org").await;
    let b: Value = refresh(&app, &refresh_token(&a))
        .await
        .json()
        .await
        .unwrap();
    let c = refresh(&app, &refresh_token(&b)).await;
    assert_eq!(c.status(), 200);
    // The clock has not moved, but `a` is two generations old: reuse.
    let r = refresh(&app, &refresh_token(&a)).await;
    assert_problem(r, 401, "refresh_token_reused").await;
}

#[tokio::test]
async fn logout_stops_the_access_token_within_a_second() {
    let app = TestApp::start().await;
    let pair = signed_up(&app, "out@example.org").await;
    let token = access(&pair);
    assert_eq!(app.me(&token).await.status(), 200);
    let r = logout(&app, &token).await;
    assert_eq!(r.status(), 204);
    let r = me_becomes(&app, &token, 401, StdDuration::from_secs(1)).await;
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_problem(r, 401, "session_revoked").await;
    let r = refresh(&app, &refresh_token(&pair)).await;
    assert_problem(r, 401, "invalid_refresh_token").await;
    // Logging out again with the dead token is refused.
    let r = logout(&app, &token).await;
    assert_problem(r, 401, "session_revoked").await;
}

#[tokio::test]
async fn on_the_outbox_bus_each_service_pulls_events_as_itself_and_as_no_other() {
    use gatehouse::proto::events::v1::SubscribeRequest;
    use gatehouse::proto::events::v1::event_stream_client::EventStreamClient;

    // Every service of the all-in-one pulls auth's events with its own
    // key: identity learns of the logout from them.
    let app = TestApp::builder().outbox_bus().start().await;
    let pair = signed_up(&app, "outbox@example.org").await;
    let token = access(&pair);
    assert_eq!(app.me(&token).await.status(), 200);
    // Identity reads auth's events from the moment its stream opens: its
    // lag is known from the stream's first message.
    let opened = "gatehouse_bus_consumer_lag{consumer=\"identity\",source=\"auth\"}";
    let deadline = std::time::Instant::now() + StdDuration::from_secs(10);
    loop {
        if app.metrics().await.contains(opened) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "identity's stream of auth's events never opened"
        );
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    let r = logout(&app, &token).await;
    assert_eq!(r.status(), 204);
    let r = me_becomes(&app, &token, 401, StdDuration::from_secs(5)).await;
    assert_problem(r, 401, "session_revoked").await;

    // The gateway's key streams as the gateway, and as no other consumer.
    let as_gateway = app
        .ctx
        .clients
        .calling_as(app.ctx.keyring.caller("gateway").unwrap());
    let ask = |consumer: &str| SubscribeRequest {
        consumer: consumer.into(),
        after: 0,
        from_latest: true,
    };
    let mut stream = EventStreamClient::new(as_gateway.channel("auth").await.unwrap());
    assert!(stream.subscribe(ask("gateway")).await.is_ok());
    for other in ["identity", "audit", "authz.ingest"] {
        let refused = stream.subscribe(ask(other)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{other}");
    }
}

#[tokio::test]
async fn users_see_and_end_their_own_sessions_only() {
    let app = TestApp::start().await;
    let laptop = signed_up(&app, "s@example.org").await;
    let phone = app.login("s@example.org", PASSWORD).await;
    let other = signed_up(&app, "other@example.org").await;

    let list: Value = app
        .with_token(
            Method::GET,
            format!("{}/v1/auth/sessions", app.auth_base),
            &access(&laptop),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
    let phone_id = sessions.iter().find(|s| s["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Someone else cannot end it.
    let r = app
        .with_token(
            Method::DELETE,
            format!("{}/v1/auth/sessions/{phone_id}", app.auth_base),
            &access(&other),
        )
        .send()
        .await
        .unwrap();
    assert_problem(r, 404, "session_not_found").await;
    assert_eq!(app.me(&access(&phone)).await.status(), 200);

    let r = app
        .with_token(
            Method::DELETE,
            format!("{}/v1/auth/sessions/{phone_id}", app.auth_base),
            &access(&laptop),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    me_becomes(&app, &access(&phone), 401, StdDuration::from_secs(1)).await;
    assert_eq!(app.me(&access(&laptop)).await.status(), 200);
}

#[tokio::test]
async fn bad_tokens_are_refused_with_a_reason() {
    let app = TestApp::start().await;
    let pair = signed_up(&app, "t@example.org").await;
    let token = access(&pair);

    let r = app.get("/v1/users/me").await;
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_problem(r, 401, "token_missing").await;
    for (bad, code) in [
        ("garbage".to_owned(), "token_malformed"),
        (token[..token.len() / 2].to_owned(), "token_malformed"),
        (
            token.replacen("v4.public.", "v4.local.", 1),
            "token_malformed",
        ),
        (flip(&token, 20), "token_bad_signature"),
    ] {
        assert_problem(app.me(&bad).await, 401, code).await;
    }
    let r = app
        .http
        .get(format!("{}/v1/users/me", app.base))
        .header("authorization", format!("Basic {token}"))
        .send()
        .await
        .unwrap();
    assert_problem(r, 401, "token_malformed").await;

    // Not valid yet (the clock stands before its nbf), then expired.
    app.clock.advance(Duration::seconds(-120));
    let fresh = app.login("t@example.org", PASSWORD).await;
    app.clock.advance(Duration::seconds(60));
    assert_eq!(app.me(&access(&fresh)).await.status(), 200);
    let early = app.login("t@example.org", PASSWORD).await;
    app.clock.advance(Duration::seconds(-30));
    assert_problem(app.me(&access(&early)).await, 401, "token_not_yet_valid").await;
    app.clock.advance(Duration::minutes(20));
    assert_problem(app.me(&token).await, 401, "token_expired").await;
}

/// Changes one base64 character inside the signed part of a token.
fn flip(token: &str, at: usize) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let i = "v4.public.".len() + at;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn the_shared_check_refuses_other_audiences_issuers_and_keys() {
    use gatehouse::middleware::bearer::{AuthKeys, TokenCheck};
    use gatehouse::middleware::token::{IssuerAudience, TokenError};
    let app = TestApp::start().await;
    let token = access(&signed_up(&app, "aud@example.org").await);
    let check = |expected: IssuerAudience| {
        TokenCheck::new(
            std::sync::Arc::new(AuthKeys {
                clients: app.ctx.clients.clone(),
            }),
            expected,
            app.clock.clone(),
            std::time::Duration::from_secs(900),
        )
    };
    // The issuer is the platform's public URL, unless set.
    let ours = IssuerAudience {
        issuer: "http://127.0.0.1:8080".into(),
        audience: "gatehouse".into(),
    };
    assert!(check(ours.clone()).check(&token).await.is_ok());
    let r = check(IssuerAudience {
        audience: "billing".into(),
        ..ours.clone()
    })
    .check(&token)
    .await;
    assert_eq!(r.unwrap_err(), TokenError::WrongAudience);
    let r = check(IssuerAudience {
        issuer: "elsewhere".into(),
        ..ours.clone()
    })
    .check(&token)
    .await;
    assert_eq!(r.unwrap_err(), TokenError::WrongIssuer);

    // A token signed with a key auth never published.
    use pasetors::keys::{AsymmetricKeyPair, Generate};
    let stranger = AsymmetricKeyPair::<pasetors::version4::V4>::generate().unwrap();
    let forged = gatehouse::middleware::token::sign(
        &stranger.secret,
        &pasetors::paserk::Id::from(&stranger.public),
        gatehouse::middleware::token::UserId::now_v7(),
        gatehouse::middleware::token::SessionId::now_v7(),
        &ours,
        app.clock.now(),
        app.clock.now() + Duration::minutes(5),
    )
    .unwrap();
    assert_problem(app.me(&forged).await, 401, "token_unknown_key").await;
}

#[tokio::test]
async fn keys_are_published_before_they_sign_and_kept_after() {
    let app = TestApp::start().await;
    let keys: Value = reqwest::get(format!("{}/v1/auth/keys", app.auth_base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = keys["keys"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    let first_kid = list[0]["kid"].as_str().unwrap().to_owned();
    assert!(first_kid.starts_with("k4.pid."));
    assert!(
        list[0]["public_key"]
            .as_str()
            .unwrap()
            .starts_with("k4.public.")
    );
    assert_eq!(keys["cache_ttl_secs"], 300);

    let old_token = access(&signed_up(&app, "k@example.org").await);
    let config = gatehouse::auth::AuthConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let new_kid = gatehouse::auth::rotate_keys(&app.ctx, &config)
        .await
        .unwrap();
    let keys: Value = reqwest::get(format!("{}/v1/auth/keys", app.auth_base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2, "{keys}");

    // Published now, but signing only after the verifiers' cache lifetime.
    let kid_of = |t: &str| gatehouse::middleware::token::key_id(t).unwrap();
    let during = access(&app.login("k@example.org", PASSWORD).await);
    assert_eq!(kid_of(&during), first_kid);
    // Past the verifiers' cache lifetime, and the signer's reload (both by
    // the injected clock): no waiting.
    app.clock.advance(Duration::seconds(301));
    let after = access(&app.login("k@example.org", PASSWORD).await);
    assert_eq!(kid_of(&after), new_kid);
    // Tokens of the old key keep working until they expire.
    assert_eq!(app.me(&old_token).await.status(), 200);
    assert_eq!(app.me(&after).await.status(), 200);
    // Once every token of the old key has expired (plus a margin for
    // instances still signing with it and clock skew), it is unpublished.
    app.clock.advance(Duration::minutes(17));
    let keys: Value = reqwest::get(format!("{}/v1/auth/keys", app.auth_base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, vec![new_kid.as_str()]);
}

#[tokio::test]
async fn my_profile_can_be_edited_with_if_match() {
    let app = TestApp::start().await;
    let token = access(&signed_up(&app, "edit@example.org").await);
    let patch = |etag: Option<&str>, name: &str| {
        let mut req = app
            .with_token(Method::PATCH, format!("{}/v1/users/me", app.base), &token)
            .json(&json!({"display_name": name}));
        if let Some(tag) = etag {
            req = req.header("if-match", tag);
        }
        req.send()
    };
    let r = patch(Some("\"1\""), "Edited").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "\"2\"");
    let r = patch(Some("\"1\""), "Lost update").await.unwrap();
    assert_problem(r, 412, "version_mismatch").await;
    let me: Value = app.me(&token).await.json().await.unwrap();
    assert_eq!(me["display_name"], "Edited");
    let r = patch(None, "").await.unwrap();
    assert_problem(r, 422, "validation_failed").await;
}

#[tokio::test]
async fn a_password_change_ends_my_other_sessions() {
    let app = TestApp::start().await;
    let here = signed_up(&app, "pw@example.org").await;
    let elsewhere = app.login("pw@example.org", PASSWORD).await;
    let change = |current: &str| {
        app.with_token(
            Method::POST,
            format!("{}/v1/users/me/password", app.base),
            &access(&here),
        )
        .json(&json!({"current_password": current, "new_password": "a brand new passphrase"}))
        .send()
    };
    assert_problem(
        change("not it at all").await.unwrap(),
        401,
        "invalid_credentials",
    )
    .await;
    assert_eq!(change(PASSWORD).await.unwrap().status(), 204);
    me_becomes(&app, &access(&elsewhere), 401, StdDuration::from_secs(2)).await;
    assert_problem(app.me(&access(&elsewhere)).await, 401, "session_revoked").await;
    assert_eq!(app.me(&access(&here)).await.status(), 200);
    app.login("pw@example.org", "a brand new passphrase").await;
}

#[tokio::test]
async fn tokens_of_disabled_or_deleted_users_stop_working() {
    let app = TestApp::start().await;
    let user = app.register("gone@example.org").await;
    let token = access(&app.login("gone@example.org", PASSWORD).await);
    let mut grpc = app.grpc().await;
    grpc.set_status(gatehouse::proto::identity::v1::SetStatusRequest {
        id: user["id"].as_str().unwrap().into(),
        status: "disabled".into(),
    })
    .await
    .unwrap();
    me_becomes(&app, &token, 401, StdDuration::from_secs(2)).await;
    assert_problem(app.me(&token).await, 401, "session_revoked").await;
    let r = app
        .auth_post(
            "/v1/auth/login",
            json!({"email": "gone@example.org", "password": PASSWORD}),
        )
        .await;
    assert_problem(r, 403, "account_disabled").await;

    app.register("bye@example.org").await;
    let token = access(&app.login("bye@example.org", PASSWORD).await);
    let r = app
        .with_token(Method::DELETE, format!("{}/v1/users/me", app.base), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    me_becomes(&app, &token, 401, StdDuration::from_secs(2)).await;
    let r = app
        .auth_post(
            "/v1/auth/login",
            json!({"email": "bye@example.org", "password": PASSWORD}),
        )
        .await;
    assert_problem(r, 401, "invalid_credentials").await;
    // The address is free again.
    app.register("bye@example.org").await;
}

#[tokio::test]
async fn validate_token_and_revocation_over_grpc() {
    use gatehouse::proto::auth::v1 as pb;
    let app = TestApp::start().await;
    let user = app.register("g@example.org").await;
    let token = access(&app.login("g@example.org", PASSWORD).await);
    let mut auth = pb::auth_client::AuthClient::new(app.ctx.clients.channel("auth").await.unwrap());
    let ok = auth
        .validate_token(pb::ValidateTokenRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.user_id, user["id"].as_str().unwrap());
    let keys = auth
        .get_public_keys(pb::GetPublicKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys.keys.len(), 1);
    let revoked = auth
        .revoke_user_sessions(pb::RevokeUserSessionsRequest {
            user_id: ok.user_id.clone(),
            except_session_id: String::new(),
            reason: "admin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked, 1);
    let e = auth
        .validate_token(pb::ValidateTokenRequest { token })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(crate::support::grpc_code(&e), "session_revoked");
    let e = auth
        .revoke_session(pb::RevokeSessionRequest {
            session_id: "nope".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn the_schedule_rotates_keys_that_grew_old() {
    let app = TestApp::builder()
        .auth(|c| c.key_rotation_interval_secs = 10)
        .start()
        .await;
    let count = || async {
        let keys: Value = reqwest::get(format!("{}/v1/auth/keys", app.auth_base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        keys["keys"].as_array().unwrap().len()
    };
    assert_eq!(count().await, 1);
    app.clock.advance(Duration::seconds(11));
    let deadline = std::time::Instant::now() + StdDuration::from_secs(5);
    while count().await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no rotation within 5 s"
        );
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_login_that_started_before_a_reset_opens_no_session() {
    use prost::Message;
    let app = TestApp::start().await;
    let user = app.register("race@example.org").await;
    // A reset, as identity reports it, stamped a minute ahead: every login
    // starting before then may have checked the old password.
    let payload = gatehouse::proto::events::v1::UserEvent {
        user_id: user["id"].as_str().unwrap().into(),
        ..Default::default()
    };
    let event = gatehouse::kernel::bus::Envelope {
        id: uuid::Uuid::now_v7().to_string(),
        r#type: "identity.password.reset".into(),
        source: "identity".into(),
        subject: payload.user_id.clone(),
        occurred_at_unix_ms: (app.clock.now() + Duration::seconds(60)).timestamp_millis(),
        payload: payload.encode_to_vec(),
        ..Default::default()
    };
    app.ctx.bus.publish(event).await.unwrap();
    let deadline = std::time::Instant::now() + StdDuration::from_secs(2);
    loop {
        let r = app
            .auth_post(
                "/v1/auth/login",
                json!({"email": "race@example.org", "password": PASSWORD}),
            )
            .await;
        if r.status() == 401 {
            assert_problem(r, 401, "invalid_credentials").await;
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reset never reached auth"
        );
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    app.clock.advance(Duration::seconds(61));
    app.login("race@example.org", PASSWORD).await;
}

/// A verifier that starts after a session ended (a restarted gateway, a
/// new instance) refuses its tokens all the same: it asks auth for the
/// sessions ended lately before it lets any token through.
#[tokio::test]
async fn a_verifier_started_after_a_logout_still_refuses_the_session() {
    use gatehouse::middleware::bearer::TokenCheck;
    use gatehouse::middleware::token::TokenError;
    let app = TestApp::start().await;
    let ended = access(&signed_up(&app, "gone@example.org").await);
    let live = access(&signed_up(&app, "here@example.org").await);
    let r = logout(&app, &ended).await;
    assert_eq!(r.status(), 204);

    let (late, _task) = TokenCheck::for_service(&app.ctx, "late-verifier")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + StdDuration::from_secs(5);
    let verdict = loop {
        match late.check(&ended).await {
            // Not caught up yet: nothing passes meanwhile.
            Err(TokenError::Unavailable) => {
                assert!(std::time::Instant::now() < deadline, "never caught up");
                tokio::time::sleep(StdDuration::from_millis(20)).await;
            }
            other => break other,
        }
    };
    assert_eq!(verdict.unwrap_err(), TokenError::Revoked);
    assert!(late.check(&live).await.is_ok());
}
