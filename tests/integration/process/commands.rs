//! The `gatehouse` subcommands an operator runs beside the services:
//! `hash calibrate`, `keys rotate` and `audit verify`.

use std::process::Command;

use super::Backend;

#[test]
fn hash_calibrate_prints_parameters_for_this_machine() {
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["hash", "calibrate", "--target-ms", "5"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("ms/hash"), "{text}");
    assert!(text.contains("[identity.scrypt]\nlog_n = "), "{text}");
}

#[test]
fn keys_rotate_publishes_a_new_signing_key() {
    let dir = tempfile::tempdir().unwrap();
    let rotate = || {
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["keys", "rotate"])
            .env("GATEHOUSE_DATA_DIR", dir.path())
            .output()
            .unwrap()
    };
    let first = rotate();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let first = String::from_utf8(first.stdout).unwrap();
    assert!(first.starts_with("published k4.pid."), "{first}");
    let second = String::from_utf8(rotate().stdout).unwrap();
    assert_ne!(first, second);
    // The key-encryption key was made once, readable by its owner only.
    assert!(dir.path().join("auth.kek").exists());
}

/// `gatehouse audit verify` on the log of a data directory (or a
/// deployment's database): it holds, every time it is asked, until a row
/// is changed, removed or added behind the store's back, and then the
/// command fails naming the entry.
#[tokio::test]
async fn audit_verify_names_the_entry_that_was_changed_removed_or_added() {
    use diesel::RunQueryDsl;
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::new();
    let verify = || {
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["audit", "verify"])
            .env("GATEHOUSE_DATA_DIR", dir.path())
            .envs(backend.env.iter().cloned())
            .output()
            .unwrap()
    };
    let empty = verify();
    assert!(empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stdout).contains("0 entries verified"));

    let mut config = gatehouse::config::Config {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    for (key, value) in &backend.env {
        match *key {
            "GATEHOUSE_DATABASE__BACKEND" => {
                config.database.backend = gatehouse::kernel::config::DatabaseBackend::Postgres;
            }
            "GATEHOUSE_DATABASE__URL" => config.database.url = value.clone(),
            _ => {}
        }
    }
    let db = gatehouse::audit::open_db(&config.database, &config.data_dir)
        .await
        .unwrap();
    let entries: Vec<gatehouse::audit::model::NewEntry> = (0..3)
        .map(|n| gatehouse::audit::model::NewEntry {
            event_id: Some(format!("event-{n}")),
            at: chrono::Utc::now(),
            actor: "user:ann".into(),
            action: "authz.binding.created".into(),
            subject: "user:bob".into(),
            outcome: "success".into(),
            client_ip: String::new(),
            request_id: String::new(),
            trace_id: String::new(),
            details: "{}".into(),
        })
        .collect();
    let key = gatehouse::audit::keys::AuditKey::load(dir.path()).unwrap();
    let sealing = key.entry_key();
    db.run(move |conn| gatehouse::audit::store::append(conn, &entries, &sealing))
        .await
        .unwrap();
    let signed = db
        .run(move |conn| gatehouse::audit::store::checkpoint(conn, &key, chrono::Utc::now()))
        .await
        .unwrap();
    assert_eq!(signed.map(|c| c.seq), Some(3));
    // Many times over: a command ends with its pool's threads at rest, so
    // its exit never races a connection being opened (on PostgreSQL that
    // race crashed the process now and then).
    for _ in 0..30 {
        let held = verify();
        assert!(
            held.status.success(),
            "{}: {}",
            held.status,
            String::from_utf8_lossy(&held.stderr)
        );
        assert!(String::from_utf8_lossy(&held.stdout).contains("3 entries verified"));
    }

    db.run(|conn| {
        diesel::sql_query("UPDATE entries SET subject = 'user:mallory' WHERE seq = 2")
            .execute(conn)
            .map_err(gatehouse::audit::error::AuditError::from)
    })
    .await
    .unwrap();
    let broken = verify();
    assert_eq!(
        broken.status.code(),
        Some(1),
        "{}: {}",
        broken.status,
        String::from_utf8_lossy(&broken.stderr)
    );
    assert!(
        String::from_utf8_lossy(&broken.stdout).contains("entry 2 was altered"),
        "{}",
        String::from_utf8_lossy(&broken.stdout)
    );
    let sql = |statement: &'static str| {
        db.run(move |conn| {
            diesel::sql_query(statement)
                .execute(conn)
                .map_err(gatehouse::audit::error::AuditError::from)
        })
    };
    sql("UPDATE entries SET subject = 'user:bob' WHERE seq = 2")
        .await
        .unwrap();
    assert!(verify().status.success(), "holds again once put back");

    // A row removed, then put back.
    sql("CREATE TABLE kept AS SELECT * FROM entries WHERE seq = 2")
        .await
        .unwrap();
    sql("DELETE FROM entries WHERE seq = 2").await.unwrap();
    let removed = verify();
    assert_eq!(removed.status.code(), Some(1));
    let said = String::from_utf8_lossy(&removed.stdout);
    assert!(said.contains("entry 2 was deleted"), "{said}");
    sql("INSERT INTO entries SELECT * FROM kept").await.unwrap();
    assert!(verify().status.success(), "holds again once put back");

    // A row added after the last, chained as the store would chain it, but
    // without audit's key to make its MAC.
    let last = db
        .run(|conn| {
            gatehouse::audit::store::list(conn, &gatehouse::audit::store::Filter::default(), 2, 1)
                .map_err(gatehouse::audit::error::AuditError::from)
        })
        .await
        .unwrap();
    let forged = gatehouse::audit::model::Entry::chain(
        4,
        uuid::Uuid::now_v7(),
        gatehouse::audit::model::NewEntry {
            event_id: None,
            at: chrono::Utc::now(),
            actor: "user:mallory".into(),
            action: "authz.binding.created".into(),
            subject: "user:mallory".into(),
            outcome: "success".into(),
            client_ip: String::new(),
            request_id: String::new(),
            trace_id: String::new(),
            details: r#"{"role":"admin"}"#.into(),
        },
        &last[0].hash,
    );
    crate::audit::insert_behind_the_store(&db, forged).await;
    let added = verify();
    assert_eq!(added.status.code(), Some(1));
    let said = String::from_utf8_lossy(&added.stdout);
    assert!(said.contains("entry 4 was forged"), "{said}");
}
