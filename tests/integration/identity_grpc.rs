//! Identity's internal gRPC API, reached through the registry as other
//! services reach it.

use chrono::Duration;
use gatehouse::proto::identity::v1 as pb;
use tonic::Code;

use crate::support::{PASSWORD, TestApp, grpc_code};

fn creds(email: &str, password: &str) -> pb::VerifyCredentialsRequest {
    pb::VerifyCredentialsRequest {
        device_token: String::new(),
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
async fn repeated_failures_are_slowed_down_and_never_lock_the_owner_out() {
    let app = TestApp::builder()
        .identity(|c| {
            c.throttle.free_failures = 3;
            c.throttle.first_delay_ms = 1_000;
        })
        .start()
        .await;
    app.register("slow@example.org").await;
    let mut grpc = app.grpc().await;
    for _ in 0..3 {
        let e = grpc
            .verify_credentials(creds("slow@example.org", "wrong password!"))
            .await
            .unwrap_err();
        assert_eq!(grpc_code(&e), "invalid_credentials");
    }
    // The next attempt, even with the right password, must wait a second:
    // refused at once, unchecked, with the wait.
    let early = grpc
        .verify_credentials(creds("slow@example.org", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(early.code(), Code::ResourceExhausted);
    assert_eq!(grpc_code(&early), "too_many_attempts");
    let retry = early
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(retry, "1");
    app.clock.advance(Duration::seconds(1));
    let signed_in = grpc
        .verify_credentials(creds("slow@example.org", PASSWORD))
        .await
        .unwrap()
        .into_inner();
    assert!(signed_in.device_token.starts_with("gd1."), "{signed_in:?}");

    // The client's counter starts again after a right password.
    for _ in 0..3 {
        grpc.verify_credentials(creds("slow@example.org", "wrong password!"))
            .await
            .unwrap_err();
    }
    let held = grpc
        .verify_credentials(creds("slow@example.org", PASSWORD))
        .await
        .unwrap_err();
    assert_eq!(grpc_code(&held), "too_many_attempts");
    // With the device token of its earlier sign-in, the owner is not held
    // by those failures.
    let with_device = pb::VerifyCredentialsRequest {
        device_token: signed_in.device_token.clone(),
        ..creds("slow@example.org", PASSWORD)
    };
    grpc.verify_credentials(with_device).await.unwrap();
    // A device token of another account is no device of this one.
    app.register("other@example.org").await;
    let borrowed = pb::VerifyCredentialsRequest {
        device_token: signed_in.device_token,
        ..creds("other@example.org", PASSWORD)
    };
    grpc.verify_credentials(borrowed).await.unwrap();
}

/// Guesses sent all at once from one client take turns: those beyond a
/// short line are refused as overloaded, and of the rest only the free
/// failures' worth are checked before the client is told to wait.
#[tokio::test]
async fn parallel_wrong_guesses_cannot_pass_the_free_failures() {
    let app = TestApp::builder()
        .identity(|c| {
            c.throttle.free_failures = 3;
            // Every guess waits its turn to hash: none is refused as overloaded there.
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
    let (mut checked, mut held, mut overloaded) = (0, 0, 0);
    for c in calls {
        match grpc_code(&c.await.unwrap()).as_str() {
            "invalid_credentials" => checked += 1,
            "too_many_attempts" => held += 1,
            "overloaded" => overloaded += 1,
            other => panic!("unexpected {other}"),
        }
    }
    // Exactly the free failures' worth of guesses were checked.
    assert_eq!(checked, 3, "{held} held, {overloaded} overloaded");
    assert!(held >= 1, "{held} held, {overloaded} overloaded");
    // And the next is told to wait too.
    let mut client = grpc.clone();
    let e = client
        .verify_credentials(creds("burst@example.org", "one more"))
        .await
        .unwrap_err();
    assert_eq!(grpc_code(&e), "too_many_attempts");
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
async fn unknown_addresses_are_throttled_like_real_ones() {
    let app = TestApp::builder()
        .identity(|c| c.throttle.free_failures = 3)
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
            let retry = e
                .metadata()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            codes.push((grpc_code(&e), retry));
        }
        answers.push(codes);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].last().unwrap().0, "too_many_attempts");
    // Once the wait has passed, both answer alike again.
    app.clock.advance(Duration::seconds(2));
    let after: Vec<String> = one_more_guess_each(&mut grpc).await;
    assert_eq!(after[0], after[1]);
}

/// One more wrong guess at each address, answered.
async fn one_more_guess_each(
    grpc: &mut pb::identity_client::IdentityClient<gatehouse::kernel::rpc::RpcChannel>,
) -> Vec<String> {
    let mut codes = Vec::new();
    for email in ["real@example.org", "ghost@example.org"] {
        let e = grpc
            .verify_credentials(creds(email, "wrong password!"))
            .await
            .unwrap_err();
        codes.push(grpc_code(&e));
    }
    codes
}
