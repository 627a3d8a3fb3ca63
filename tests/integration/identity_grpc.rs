//! Identity's internal gRPC API, reached through the registry as other
//! services reach it.

use chrono::Duration;
use gatehouse::proto::identity::v1 as pb;
use tonic::Code;

use crate::support::{PASSWORD, TestApp, grpc_code};

fn creds(email: &str, password: &str) -> pb::VerifyCredentialsRequest {
    pb::VerifyCredentialsRequest {
        email: email.into(),
        password: password.into(),
    }
}

#[tokio::test]
async fn credentials_check_and_unknown_email_looks_like_wrong_password() {
    let app = TestApp::start().await;
    let user = app.register("ann@example.org").await;
    let mut grpc = app.grpc().await;

    let ok = grpc
        .verify_credentials(creds(" ANN@example.org", PASSWORD))
        .await
        .unwrap();
    assert_eq!(
        ok.into_inner().user.unwrap().id,
        user["id"].as_str().unwrap()
    );

    let wrong = grpc
        .verify_credentials(creds("ann@example.org", "wrong password!"))
        .await
        .unwrap_err();
    let unknown = grpc
        .verify_credentials(creds("bob@example.org", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(wrong.message(), unknown.message());
    assert_eq!(grpc_code(&wrong), "invalid_credentials");
    assert_eq!(grpc_code(&unknown), "invalid_credentials");
}

#[tokio::test]
async fn repeated_failures_lock_the_account_for_a_while() {
    let app = TestApp::builder()
        .identity(|c| {
            c.lockout.max_failures = 3;
            c.lockout.duration_secs = 600;
        })
        .start()
        .await;
    app.register("lock@example.org").await;
    let mut events = app
        .ctx
        .bus
        .subscribe("test", &["identity"], gatehouse::kernel::bus::Start::Latest)
        .await
        .unwrap();
    let mut grpc = app.grpc().await;
    for _ in 0..3 {
        let e = grpc
            .verify_credentials(creds("lock@example.org", "wrong password!"))
            .await
            .unwrap_err();
        assert_eq!(grpc_code(&e), "invalid_credentials");
    }
    // Even the right password is refused while locked.
    let locked = grpc
        .verify_credentials(creds("lock@example.org", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(locked.code(), Code::PermissionDenied);
    assert_eq!(grpc_code(&locked), "account_locked");
    let retry: u64 = locked
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 600, "{retry}");

    let mut types = Vec::new();
    while let Ok(Some(e)) =
        tokio::time::timeout(std::time::Duration::from_secs(3), events.recv()).await
    {
        let e = e.event;
        types.push(e.r#type.clone());
        if e.r#type == "identity.user.locked" {
            break;
        }
    }
    assert!(
        types.contains(&"identity.user.locked".to_owned()),
        "{types:?}"
    );

    app.clock.advance(Duration::seconds(601));
    grpc.verify_credentials(creds("lock@example.org", PASSWORD))
        .await
        .unwrap();
    // A success clears the count: failures start again from zero.
    for _ in 0..2 {
        grpc.verify_credentials(creds("lock@example.org", "wrong password!"))
            .await
            .unwrap_err();
    }
    grpc.verify_credentials(creds("lock@example.org", PASSWORD))
        .await
        .unwrap();
}

#[tokio::test]
async fn parallel_wrong_guesses_cannot_pass_the_limit() {
    let app = TestApp::builder()
        .identity(|c| {
            c.lockout.max_failures = 5;
            // Every guess waits its turn to hash: none is refused as overloaded.
            c.scrypt.max_waiting = 32;
        })
        .start()
        .await;
    app.register("burst@example.org").await;
    let grpc = app.grpc().await;
    let mut calls = Vec::new();
    for i in 0..25 {
        let mut client = grpc.clone();
        calls.push(tokio::spawn(async move {
            client
                .verify_credentials(creds("burst@example.org", &format!("guess number {i}")))
                .await
                .unwrap_err()
        }));
    }
    let mut checked = 0;
    let mut locked = 0;
    for c in calls {
        match grpc_code(&c.await.unwrap()).as_str() {
            "invalid_credentials" => checked += 1,
            "account_locked" => locked += 1,
            other => panic!("unexpected {other}"),
        }
    }
    // Exactly the limit's worth of guesses were checked against the hash.
    assert_eq!(checked, 5);
    assert_eq!(locked, 20);
    let mut client = grpc.clone();
    let e = client
        .verify_credentials(creds("burst@example.org", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(grpc_code(&e), "account_locked");
}

#[tokio::test]
async fn users_can_be_read_updated_and_disabled() {
    let app = TestApp::start().await;
    let a = app.register("a@example.org").await;
    let b = app.register("b@example.org").await;
    let id = a["id"].as_str().unwrap().to_owned();
    let mut grpc = app.grpc().await;

    let got = grpc
        .get_user(pb::GetUserRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.email, "a@example.org");

    let missing = uuid::Uuid::now_v7().to_string();
    let many = grpc
        .get_users(pb::GetUsersRequest {
            ids: vec![
                id.clone(),
                b["id"].as_str().unwrap().into(),
                missing.clone(),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(many.users.len(), 2);
    let e = grpc
        .get_user(pb::GetUserRequest { id: missing })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = grpc
        .get_user(pb::GetUserRequest {
            id: "not-a-uuid".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let updated = grpc
        .update_profile(pb::UpdateProfileRequest {
            id: id.clone(),
            display_name: Some("Ann Again".into()),
            expected_version: Some(1),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.display_name.as_str(), updated.version),
        ("Ann Again", 2)
    );
    let stale = grpc
        .update_profile(pb::UpdateProfileRequest {
            id: id.clone(),
            display_name: Some("Lost Update".into()),
            expected_version: Some(1),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert_eq!(
        grpc.get_user(pb::GetUserRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .display_name,
        "Ann Again"
    );

    let disabled = grpc
        .set_status(pb::SetStatusRequest {
            id: id.clone(),
            status: "disabled".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(disabled.status, "disabled");
    let e = grpc
        .verify_credentials(creds("a@example.org", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(grpc_code(&e), "account_disabled");
    let e = grpc
        .set_status(pb::SetStatusRequest {
            id: id.clone(),
            status: "sleeping".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    grpc.set_status(pb::SetStatusRequest {
        id,
        status: "active".into(),
    })
    .await
    .unwrap();
    grpc.verify_credentials(creds("a@example.org", PASSWORD))
        .await
        .unwrap();
}

#[tokio::test]
async fn password_change_needs_the_current_password() {
    let app = TestApp::start().await;
    let user = app.register("pw@example.org").await;
    let id = user["id"].as_str().unwrap().to_owned();
    let mut grpc = app.grpc().await;
    let change = |current: &str, new: &str| pb::ChangePasswordRequest {
        id: id.clone(),
        current_password: current.into(),
        new_password: new.into(),
    };
    let e = grpc
        .change_password(change("not my password", "a brand new passphrase"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = grpc
        .change_password(change(PASSWORD, "short"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let changed = grpc
        .change_password(change(PASSWORD, "a brand new passphrase"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.version, 2);
    grpc.verify_credentials(creds("pw@example.org", "a brand new passphrase"))
        .await
        .unwrap();
    assert!(
        grpc.verify_credentials(creds("pw@example.org", PASSWORD))
            .await
            .is_err()
    );
}

fn hash_count(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("gatehouse_password_hash_duration_seconds_count{operation=\"hash\"}")
        })
        .map_or(0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

#[tokio::test]
async fn hashes_made_with_old_parameters_are_upgraded_at_login() {
    let mut old = TestApp::start().await;
    old.register("old@example.org").await;
    old.stop().await;

    let new = TestApp::builder()
        .identity(|c| c.scrypt.log_n = 5)
        .storage_of(&old)
        .start()
        .await;
    let mut grpc = new.grpc().await;
    assert_eq!(hash_count(&new.metrics().await), 0);
    grpc.verify_credentials(creds("old@example.org", PASSWORD))
        .await
        .unwrap();
    // The first login re-hashed with the new parameters ...
    assert_eq!(hash_count(&new.metrics().await), 1);
    grpc.verify_credentials(creds("old@example.org", PASSWORD))
        .await
        .unwrap();
    // ... and stored it: the second login had nothing to upgrade.
    assert_eq!(hash_count(&new.metrics().await), 1);
}

#[tokio::test]
async fn unknown_addresses_lock_like_real_ones() {
    let app = TestApp::builder()
        .identity(|c| c.lockout.max_failures = 3)
        .start()
        .await;
    app.register("real@example.org").await;
    let mut grpc = app.grpc().await;
    let mut answers = Vec::new();
    for email in ["real@example.org", "ghost@example.org"] {
        let mut codes = Vec::new();
        for _ in 0..4 {
            let e = grpc
                .verify_credentials(creds(email, "wrong password!"))
                .await
                .unwrap_err();
            codes.push(grpc_code(&e));
        }
        answers.push(codes);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].last().unwrap(), "account_locked");
}
