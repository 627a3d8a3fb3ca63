//! The audit log's chain on the app's database (SQLite, or PostgreSQL
//! under `it-postgres`): entries read back as they were appended, an event
//! is recorded once, and rows changed, removed or added behind the store's
//! back are named by verification.

use chrono::{Duration, Utc};
use diesel::RunQueryDsl;
use gatehouse::audit::keys::AuditKey;
use gatehouse::audit::model::{Entry, Finding, NewEntry};
use gatehouse::audit::store::{self, Filter};
use gatehouse::audit::{error::AuditError, open_db};
use gatehouse::kernel::db::Db;

use crate::support::TestApp;

fn entry(n: usize, actor: &str, action: &str) -> NewEntry {
    NewEntry {
        event_id: Some(format!("event-{n}")),
        at: Utc::now() + Duration::milliseconds(n as i64),
        actor: actor.into(),
        action: action.into(),
        subject: format!("user:{n}"),
        outcome: "success".into(),
        client_ip: "192.0.2.7".into(),
        request_id: format!("req-{n}"),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        details: format!(r#"{{"n":{n}}}"#),
    }
}

async fn verify(db: &Db) -> Result<u64, Finding> {
    let dir = db_key_dir();
    let key = AuditKey::load(&dir).unwrap();
    db.run(move |conn| store::verify(conn, &key, None))
        .await
        .unwrap()
}

/// What the tests' entries are sealed with: the MAC key of the run's key.
fn sealing() -> gatehouse::audit::keys::EntryKey {
    AuditKey::load(&db_key_dir()).unwrap().entry_key()
}

/// Where the tests keep audit's key: one for the whole run, as a data
/// directory keeps one.
fn db_key_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("gatehouse-test-audit-key")
}

async fn sql(db: &Db, statement: &str) {
    let statement = statement.to_owned();
    db.run(move |conn| Ok::<_, AuditError>(diesel::sql_query(statement).execute(conn)?))
        .await
        .unwrap();
}

/// Writes `forged` into the log's table as it is, as someone with the
/// database's password could.
pub async fn insert_behind_the_store(db: &Db, forged: Entry) {
    db.run(move |conn| {
        use gatehouse::audit::schema::entries;
        Ok::<_, AuditError>(
            diesel::insert_into(entries::table)
                .values(store::NewRow::from(&forged))
                .execute(conn)?,
        )
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_chain_reads_back_records_an_event_once_and_names_what_was_tampered_with() {
    let app = TestApp::start().await;
    let db = open_db(&app.ctx.database, &app.ctx.data_dir).await.unwrap();
    assert_eq!(verify(&db).await, Ok(0), "an empty log holds");

    let first: Vec<NewEntry> = (1..=4)
        .map(|n| entry(n, "user:ann", "identity.user.updated"))
        .collect();
    let appended = db
        .run(move |conn| store::append(conn, &first, &sealing()))
        .await
        .unwrap();
    assert_eq!(
        appended.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    // Events 3 and 4 again, with a new one: only the new one is appended.
    let again = vec![
        entry(3, "user:ann", "identity.user.updated"),
        entry(4, "user:ann", "identity.user.updated"),
        entry(5, "service:auth", "auth.session.revoked"),
    ];
    let appended = db
        .run(move |conn| store::append(conn, &again, &sealing()))
        .await
        .unwrap();
    assert_eq!(appended.len(), 1);
    assert_eq!(appended[0].seq, 5);
    assert_eq!(appended[0].prev_hash, {
        let read = db
            .run(|conn| Ok::<_, AuditError>(store::list(conn, &Filter::default(), 3, 1)?))
            .await
            .unwrap();
        read[0].hash.clone()
    });
    assert_eq!(verify(&db).await, Ok(5));

    // Read back exactly as hashed, filtered and paged.
    let by_auth = db
        .run(|conn| {
            let filter = Filter {
                actor: Some("service:auth".into()),
                ..Filter::default()
            };
            Ok::<_, AuditError>(store::list(conn, &filter, 0, 10)?)
        })
        .await
        .unwrap();
    assert_eq!(by_auth.len(), 1);
    let read = &by_auth[0].fields;
    assert_eq!(read.event_id.as_deref(), Some("event-5"));
    assert_eq!(read.action, "auth.session.revoked");
    assert_eq!(read.details, r#"{"n":5}"#);
    assert_eq!(read.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(by_auth[0].computed_hash(), by_auth[0].hash);
    let page = db
        .run(|conn| Ok::<_, AuditError>(store::list(conn, &Filter::default(), 2, 2)?))
        .await
        .unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);

    // A row changed behind the store's back: named, and holding again once
    // put back.
    sql(
        &db,
        r#"UPDATE entries SET details = '{"n":33}' WHERE seq = 3"#,
    )
    .await;
    assert_eq!(verify(&db).await, Err(Finding::Altered(3)));
    sql(
        &db,
        r#"UPDATE entries SET details = '{"n":3}' WHERE seq = 3"#,
    )
    .await;
    assert_eq!(verify(&db).await, Ok(5));

    // A row removed: named.
    sql(
        &db,
        "CREATE TABLE kept AS SELECT * FROM entries WHERE seq = 2",
    )
    .await;
    sql(&db, "DELETE FROM entries WHERE seq = 2").await;
    assert_eq!(verify(&db).await, Err(Finding::Deleted(2)));
    sql(&db, "INSERT INTO entries SELECT * FROM kept").await;
    assert_eq!(verify(&db).await, Ok(5));

    // A row added after the last, made as the chain would make it: the
    // head does not know it.
    let last = db
        .run(|conn| Ok::<_, AuditError>(store::list(conn, &Filter::default(), 4, 1)?))
        .await
        .unwrap();
    let forged = Entry::chain(
        6,
        uuid::Uuid::now_v7(),
        entry(6, "user:mallory", "authz.binding.created"),
        &last[0].hash,
    );
    insert_behind_the_store(&db, forged).await;
    // Made without audit's key: its MAC does not hold.
    assert_eq!(verify(&db).await, Err(Finding::Forged(6)));
    sql(&db, "DELETE FROM entries WHERE seq = 6").await;
    assert_eq!(verify(&db).await, Ok(5));

    // A checkpoint signs the head; the tail cut off with the head set back
    // to match is then found.
    let key = AuditKey::load(&db_key_dir()).unwrap();
    let signed = db
        .run(move |conn| store::checkpoint(conn, &key, Utc::now()))
        .await
        .unwrap()
        .expect("a head to sign");
    assert_eq!(signed.seq, 5);
    let key = AuditKey::load(&db_key_dir()).unwrap();
    let again = db
        .run(move |conn| store::checkpoint(conn, &key, Utc::now()))
        .await
        .unwrap();
    assert_eq!(again, None, "a head is signed once");
    assert_eq!(verify(&db).await, Ok(5));
    sql(&db, "DELETE FROM entries WHERE seq >= 4").await;
    sql(
        &db,
        "UPDATE chain_head SET seq = 3, hash = (SELECT hash FROM entries WHERE seq = 3)",
    )
    .await;
    assert_eq!(verify(&db).await, Err(Finding::Deleted(4)));
    sql(&db, "UPDATE checkpoints SET hash = 'x'").await;
    assert_eq!(verify(&db).await, Err(Finding::ForgedCheckpoint(5)));
}

/// A batch larger than one insert statement carries, with an event twice
/// in it and one recorded before, goes in whole, in order, each event once.
#[tokio::test]
async fn a_large_batch_is_appended_in_order_each_event_once() {
    let app = TestApp::start().await;
    let db = open_db(&app.ctx.database, &app.ctx.data_dir).await.unwrap();
    let before = vec![entry(7, "user:ann", "identity.user.updated")];
    db.run(move |conn| store::append(conn, &before, &sealing()))
        .await
        .unwrap();
    let mut batch: Vec<NewEntry> = (0..450)
        .map(|n| entry(1000 + n, "user:bob", "identity.user.updated"))
        .collect();
    batch.insert(100, entry(1000, "user:bob", "identity.user.updated"));
    batch.insert(300, entry(7, "user:ann", "identity.user.updated"));
    let appended = db
        .run(move |conn| store::append(conn, &batch, &sealing()))
        .await
        .unwrap();
    assert_eq!(appended.len(), 450);
    assert!(
        appended
            .windows(2)
            .all(|w| w[1].seq == w[0].seq + 1 && w[1].prev_hash == w[0].hash)
    );
    let read = db
        .run(|conn| store::list(conn, &Filter::default(), 0, 1000).map_err(AuditError::from))
        .await
        .unwrap();
    assert_eq!(read.len(), 451);
    assert_eq!(read[1..], appended[..]);
    assert_eq!(verify(&db).await, Ok(451));
}

#[tokio::test]
async fn retention_removes_old_entries_up_to_a_checkpoint_and_what_remains_verifies() {
    let app = TestApp::start().await;
    let db = open_db(&app.ctx.database, &app.ctx.data_dir).await.unwrap();
    let old = Utc::now() - Duration::days(100);
    let append =
        |entries: Vec<NewEntry>| db.run(move |conn| store::append(conn, &entries, &sealing()));
    let sign = || {
        let key = AuditKey::load(&db_key_dir()).unwrap();
        db.run(move |conn| store::checkpoint(conn, &key, Utc::now()))
    };
    let aged = |n: usize| NewEntry {
        at: old + Duration::minutes(n as i64),
        ..entry(n, "user:ann", "identity.user.updated")
    };
    append((1..=3).map(aged).collect()).await.unwrap();
    sign().await.unwrap();
    append((4..=5).map(aged).collect()).await.unwrap();
    sign().await.unwrap();
    append(
        (6..=7)
            .map(|n| entry(n, "user:ann", "identity.user.updated"))
            .collect(),
    )
    .await
    .unwrap();

    // Nothing is old enough without a checkpoint among the old: nothing
    // goes. Then the old entries go up to the newest old checkpoint.
    let key = AuditKey::load(&db_key_dir()).unwrap();
    let removed = db
        .run(move |conn| store::retain(conn, old, &key, Utc::now()))
        .await
        .unwrap();
    assert_eq!(removed, 0);
    let key = AuditKey::load(&db_key_dir()).unwrap();
    let removed = db
        .run(move |conn| store::retain(conn, Utc::now() - Duration::days(30), &key, Utc::now()))
        .await
        .unwrap();
    assert_eq!(removed, 5);
    assert_eq!(
        verify(&db).await,
        Ok(2),
        "what is kept verifies from its anchor"
    );

    // One more removed behind retention's back: nothing vouches for it.
    sql(&db, "DELETE FROM entries WHERE seq = 6").await;
    assert_eq!(verify(&db).await, Err(Finding::Deleted(6)));
}

/// Appends entries `from..=to` and signs the head, keeping the witness at
/// `witness` as the service does; answers the checkpoint.
async fn append_and_sign(
    db: &Db,
    witness: &std::path::Path,
    from: usize,
    to: usize,
) -> gatehouse::audit::model::Checkpoint {
    let entries: Vec<NewEntry> = (from..=to)
        .map(|n| entry(n, "user:ann", "identity.user.updated"))
        .collect();
    db.run(move |conn| store::append(conn, &entries, &sealing()))
        .await
        .unwrap();
    let key = AuditKey::load(&db_key_dir()).unwrap();
    let signed = db
        .run(move |conn| store::checkpoint(conn, &key, Utc::now()))
        .await
        .unwrap()
        .unwrap();
    gatehouse::audit::witness::write(witness, &signed).unwrap();
    signed
}

/// The log held to its witness too.
async fn verify_witnessed(db: &Db, witness: &std::path::Path) -> Result<u64, Finding> {
    let key = AuditKey::load(&db_key_dir()).unwrap();
    let witness = gatehouse::audit::witness::read(witness).unwrap();
    db.run(move |conn| store::verify(conn, &key, witness.as_ref()))
        .await
        .unwrap()
}

/// Whoever can write the audit database, but not the witness kept outside
/// it, cannot make entries vanish unseen: a tail cut with the head set
/// back, the last checkpoint deleted with the tail after the one before,
/// and everything wiped with the head reset are each named.
#[tokio::test]
async fn the_witness_names_a_cut_tail_and_a_wiped_log() {
    let app = TestApp::start().await;
    let db = open_db(&app.ctx.database, &app.ctx.data_dir).await.unwrap();
    let witness = app.ctx.data_dir.join("audit.witness");
    append_and_sign(&db, &witness, 1, 3).await;
    append_and_sign(&db, &witness, 4, 6).await;
    assert_eq!(verify_witnessed(&db, &witness).await, Ok(6));

    // The tail after the first checkpoint cut, the last checkpoint with
    // it, the head set back to match: the database alone holds.
    sql(&db, "DELETE FROM entries WHERE seq >= 5").await;
    sql(&db, "DELETE FROM checkpoints WHERE seq > 3").await;
    sql(
        &db,
        "UPDATE chain_head SET seq = 4, hash = (SELECT hash FROM entries WHERE seq = 4)",
    )
    .await;
    assert_eq!(
        verify(&db).await,
        Ok(4),
        "without the witness, nothing shows"
    );
    assert_eq!(
        verify_witnessed(&db, &witness).await,
        Err(Finding::Deleted(5))
    );
    sql(&db, "DELETE FROM entries WHERE seq >= 4").await;
    sql(
        &db,
        "UPDATE chain_head SET seq = 3, hash = (SELECT hash FROM entries WHERE seq = 3)",
    )
    .await;
    assert_eq!(
        verify_witnessed(&db, &witness).await,
        Err(Finding::Deleted(4))
    );

    // Everything wiped and the head reset.
    sql(&db, "DELETE FROM entries").await;
    sql(&db, "DELETE FROM checkpoints").await;
    sql(
        &db,
        &format!(
            "UPDATE chain_head SET seq = 0, hash = '{}'",
            gatehouse::audit::model::GENESIS
        ),
    )
    .await;
    assert_eq!(verify(&db).await, Ok(0));
    assert_eq!(
        verify_witnessed(&db, &witness).await,
        Err(Finding::Deleted(1))
    );

    // A witness not signed by audit's key vouches for nothing.
    let mut forged = gatehouse::audit::witness::read(&witness).unwrap().unwrap();
    forged.seq = 2;
    gatehouse::audit::witness::write(&witness, &forged).unwrap();
    assert_eq!(
        verify_witnessed(&db, &witness).await,
        Err(Finding::ForgedCheckpoint(2))
    );
}

/// Whoever can write the database but not read audit's key cannot make
/// entries it will take: an entry appended with a good hash (the head moved
/// to it), an entry after the last checkpoint changed and every hash after
/// it made again, the whole chain made again with every checkpoint gone,
/// and the oldest entries removed with no retention are each named.
#[tokio::test]
async fn entries_made_without_audits_key_are_named() {
    let app = TestApp::start().await;
    let db = open_db(&app.ctx.database, &app.ctx.data_dir).await.unwrap();
    let witness = app.ctx.data_dir.join("audit.witness");
    append_and_sign(&db, &witness, 1, 3).await;
    append_and_sign(&db, &witness, 4, 5).await;
    let entries = |db: &Db| {
        let db = db.clone();
        async move {
            db.run(|conn| Ok::<_, AuditError>(store::list(conn, &Filter::default(), 0, 100)?))
                .await
                .unwrap()
        }
    };
    // Rewrites every entry from `from` on with `change`, each hashed
    // again after the one before, and moves the head to the last.
    let remake = |db: Db, from: i64, change: fn(&mut NewEntry)| async move {
        let mut kept = entries(&db).await;
        let mut prev = kept
            .iter()
            .find(|e| e.seq == from - 1)
            .map_or(gatehouse::audit::model::GENESIS.to_owned(), |e| {
                e.hash.clone()
            });
        for entry in kept.iter_mut().filter(|e| e.seq >= from) {
            let mut fields = entry.fields.clone();
            if entry.seq == from {
                change(&mut fields);
            }
            let remade = Entry::chain(entry.seq, entry.id, fields, &prev);
            prev.clone_from(&remade.hash);
            sql(
                &db,
                &format!("DELETE FROM entries WHERE seq = {}", entry.seq),
            )
            .await;
            insert_behind_the_store(&db, remade.clone()).await;
            *entry = remade;
        }
        sql(&db, &format!("UPDATE chain_head SET hash = '{prev}'")).await;
    };

    // One appended with a good hash, the head moved to it.
    let last = entries(&db).await.pop().unwrap();
    let forged = Entry::chain(
        6,
        uuid::Uuid::now_v7(),
        entry(6, "user:mallory", "authz.binding.created"),
        &last.hash,
    );
    insert_behind_the_store(&db, forged.clone()).await;
    sql(
        &db,
        &format!("UPDATE chain_head SET seq = 6, hash = '{}'", forged.hash),
    )
    .await;
    assert_eq!(
        verify_witnessed(&db, &witness).await,
        Err(Finding::Forged(6))
    );
    sql(&db, "DELETE FROM entries WHERE seq = 6").await;
    sql(
        &db,
        &format!("UPDATE chain_head SET seq = 5, hash = '{}'", last.hash),
    )
    .await;
    assert_eq!(verify_witnessed(&db, &witness).await, Ok(5));

    // Two more entries after the last checkpoint; the first changed, it
    // and the one after hashed again, the head moved with them: its MAC
    // says so, where no checkpoint can.
    let mut more: Vec<NewEntry> = vec![entry(7, "user:ann", "identity.user.updated")];
    more.push(entry(8, "user:ann", "identity.user.updated"));
    db.run(move |conn| store::append(conn, &more, &sealing()))
        .await
        .unwrap();
    assert_eq!(verify_witnessed(&db, &witness).await, Ok(7));
    remake(db.clone(), 6, |f| f.actor = "user:mallory".into()).await;
    assert_eq!(
        verify_witnessed(&db, &witness).await,
        Err(Finding::Forged(6))
    );

    // The whole chain made again, every checkpoint and the witness gone.
    sql(&db, "DELETE FROM checkpoints").await;
    remake(db.clone(), 1, |f| f.details = "{}".into()).await;
    assert_eq!(verify(&db).await, Err(Finding::Forged(1)));

    // The oldest entries removed, with no retention to say so.
    sql(&db, "DELETE FROM entries WHERE seq <= 2").await;
    assert_eq!(verify(&db).await, Err(Finding::Deleted(1)));
}

/// The audit database put back as an older copy of itself is named: the
/// witness saw entries the copy does not have.
#[cfg(not(feature = "it-postgres"))]
#[tokio::test]
async fn an_older_copy_of_the_audit_database_is_named() {
    let data = tempfile::tempdir().unwrap();
    let config = gatehouse::kernel::config::DatabaseConfig::default();
    let witness = data.path().join("audit.witness");
    let file = data.path().join("audit.db");
    {
        let db = open_db(&config, data.path()).await.unwrap();
        append_and_sign(&db, &witness, 1, 3).await;
        sql(&db, "PRAGMA wal_checkpoint(TRUNCATE)").await;
    }
    let copy = data.path().join("audit.db.old");
    std::fs::copy(&file, &copy).unwrap();
    {
        let db = open_db(&config, data.path()).await.unwrap();
        append_and_sign(&db, &witness, 4, 6).await;
        assert_eq!(verify_witnessed(&db, &witness).await, Ok(6));
        sql(&db, "PRAGMA wal_checkpoint(TRUNCATE)").await;
    }
    for stale in ["audit.db-wal", "audit.db-shm"] {
        let _ = std::fs::remove_file(data.path().join(stale));
    }
    std::fs::rename(&copy, &file).unwrap();
    let db = open_db(&config, data.path()).await.unwrap();
    assert_eq!(verify(&db).await, Ok(3), "the copy holds in itself");
    assert_eq!(
        verify_witnessed(&db, &witness).await,
        Err(Finding::Deleted(4))
    );
}

/// The entries the filter `query` finds through the gateway, as `token`'s
/// holder asks for them, waiting up to 5 s for at least `least`.
async fn entries_of(
    app: &TestApp,
    token: &str,
    query: &str,
    least: usize,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = app
            .through(
                reqwest::Method::GET,
                &format!("/v1/audit/events?{query}"),
                token,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let page: serde_json::Value = r.json().await.unwrap();
        let items = page["items"].as_array().unwrap().clone();
        if items.len() >= least || std::time::Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// What users and admins do lands on the log with who did it, from where,
/// in which request and trace, and the chain holds.
#[tokio::test]
async fn every_change_is_recorded_with_its_actor_client_request_and_trace() {
    let app = TestApp::builder().with_audit().start().await;
    let auditor = app.admin("auditor@example.org").await;
    let client = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let r = client
        .post(format!("{}/v1/users", app.gateway_base))
        .header("x-request-id", "audit-register")
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .json(&serde_json::json!({"email": "bob@example.org", "password": crate::support::PASSWORD, "display_name": "Bob"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let bob: serde_json::Value = r.json().await.unwrap();
    let bob_id = bob["id"].as_str().unwrap();
    // A wrong password, then the right one.
    let login = |password: &'static str, request: &'static str| {
        client
            .post(format!("{}/v1/auth/login", app.gateway_base))
            .header("x-request-id", request)
            .json(&serde_json::json!({"email": "bob@example.org", "password": password}))
            .send()
    };
    assert_eq!(
        login("not the password", "audit-bad-login")
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        login(crate::support::PASSWORD, "audit-login")
            .await
            .unwrap()
            .status(),
        200
    );

    let subject = format!("subject=user:{bob_id}");
    let about_bob = entries_of(&app, &auditor, &subject, 2).await;
    let registered = about_bob
        .iter()
        .find(|e| e["action"] == "identity.user.registered")
        .expect("the registration is on the log");
    assert_eq!(registered["actor"], "anonymous");
    assert_eq!(registered["client_ip"], "127.0.0.2");
    assert_eq!(registered["request_id"], "audit-register");
    assert_eq!(registered["trace_id"], trace);
    assert_eq!(registered["outcome"], "success");
    assert_eq!(registered["details"]["email"], "bob@example.org");
    let failed = about_bob
        .iter()
        .find(|e| e["action"] == "identity.login.failed")
        .expect("the failed login is on the log");
    assert_eq!(failed["outcome"], "failure");
    assert_eq!(failed["request_id"], "audit-bad-login");
    assert_eq!(
        failed["client_ip"], "127.0.0.2",
        "auth passed the client on to identity"
    );

    let sessions = entries_of(
        &app,
        &auditor,
        &format!("action=auth.session.created&actor=user:{bob_id}"),
        1,
    )
    .await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["request_id"], "audit-login");
    assert!(
        sessions[0]["subject"]
            .as_str()
            .unwrap()
            .starts_with("session:")
    );

    // The admin's grant is on the log too, as the platform's own work
    // (it was made from the command line), and the chain holds.
    let grants = entries_of(&app, &auditor, "action=authz.binding.created", 1).await;
    assert!(
        grants.iter().any(|e| e["details"]["role"] == "admin"),
        "{grants:?}"
    );
    let r = app
        .through(reqwest::Method::GET, "/v1/audit/verify", &auditor)
        .send()
        .await
        .unwrap();
    let verified: serde_json::Value = r.json().await.unwrap();
    assert_eq!(verified["holds"], true, "{verified}");
    assert!(
        verified["entries_verified"].as_u64().unwrap() >= 5,
        "{verified}"
    );

    // The export holds every entry, one JSON object per line, in order.
    let r = app
        .through(reqwest::Method::GET, "/v1/audit/events/export", &auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let seqs: Vec<i64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(
        seqs.len() >= 5 && seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "{seqs:?}"
    );
}

/// The log is for holders of `audit:read`; a bad query changes nothing
/// and says what is wrong.
#[tokio::test]
async fn the_log_is_read_only_with_audit_read_and_bad_queries_are_422() {
    let app = TestApp::builder().with_audit().start().await;
    let admin = app.admin("root@example.org").await;
    let user = app.signed_in("plain@example.org").await;
    for path in [
        "/v1/audit/events",
        "/v1/audit/events/export",
        "/v1/audit/verify",
    ] {
        let r = app
            .through(reqwest::Method::GET, path, &user)
            .send()
            .await
            .unwrap();
        let p = crate::support::assert_problem(r, 403, "forbidden").await;
        assert_eq!(p["permission"], "audit:read");
    }
    for query in [
        "limit=0",
        "limit=x",
        "from=yesterday",
        "colour=red",
        "cursor=zz",
    ] {
        let r = app
            .through(
                reqwest::Method::GET,
                &format!("/v1/audit/events?{query}"),
                &admin,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{query}");
    }
    // Pages follow one another by cursor.
    let r = app
        .through(reqwest::Method::GET, "/v1/audit/events?limit=1", &admin)
        .send()
        .await
        .unwrap();
    let first: serde_json::Value = r.json().await.unwrap();
    let cursor = first["next_cursor"].as_str().expect("more than one entry");
    let r = app
        .through(
            reqwest::Method::GET,
            &format!("/v1/audit/events?limit=1&cursor={cursor}"),
            &admin,
        )
        .send()
        .await
        .unwrap();
    let second: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        second["items"][0]["seq"].as_i64().unwrap(),
        first["items"][0]["seq"].as_i64().unwrap() + 1
    );
}

/// Requests from one client (127.0.0.2), each with a request id and a
/// trace of its own, so every entry can be told by them.
struct Client {
    http: reqwest::Client,
    gateway: String,
}

impl Client {
    fn new(app: &TestApp) -> Client {
        Client {
            http: reqwest::Client::builder()
                .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
                .build()
                .unwrap(),
            gateway: app.gateway_base.clone(),
        }
    }

    /// `method path` as request `id` (its trace id is `id` padded with
    /// zeros to 32 hex digits), with `token` and `body` when given.
    async fn send(
        &self,
        id: &str,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.gateway))
            .header("x-request-id", id)
            .header(
                "traceparent",
                format!("00-{}-00f067aa0ba902b7-01", trace_of(id)),
            );
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }
}

/// The trace id the test gives request `id`: its hex digits, padded.
fn trace_of(id: &str) -> String {
    let digits: String = id.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{digits:0<32}").chars().take(32).collect()
}

/// Every kind of change identity, auth and authz make is on the log, with
/// who made it, the client's address, the request and the trace.
#[tokio::test]
async fn every_state_changing_action_is_on_the_log_with_its_request() {
    use reqwest::Method;
    use serde_json::json;
    let app = TestApp::builder().with_audit().start().await;
    let root = app.admin("root@example.org").await;
    let client = Client::new(&app);
    let password = crate::support::PASSWORD;
    let body = |email: &str| json!({"email": email, "password": password, "display_name": "Cat"});
    let login = |email: &str, password: &str| json!({"email": email, "password": password});

    assert_eq!(
        client
            .send(
                "c-register",
                Method::POST,
                "/v1/users",
                None,
                Some(body("cat@example.org"))
            )
            .await
            .status(),
        201
    );
    let r = client
        .send(
            "c-login",
            Method::POST,
            "/v1/auth/login",
            None,
            Some(login("cat@example.org", password)),
        )
        .await;
    assert_eq!(r.status(), 200);
    let cat: serde_json::Value = r.json().await.unwrap();
    let cat_token = cat["access_token"].as_str().unwrap().to_owned();
    let r = client
        .send(
            "c-bad-login",
            Method::POST,
            "/v1/auth/login",
            None,
            Some(login("cat@example.org", "not it at all")),
        )
        .await;
    assert_eq!(r.status(), 401);
    let r = client
        .send(
            "c-password",
            Method::POST,
            "/v1/users/me/password",
            Some(&cat_token),
            Some(json!({"current_password": password, "new_password": "cats have nine lives"})),
        )
        .await;
    assert_eq!(r.status(), 204);
    let r = client
        .send(
            "c-logout",
            Method::POST,
            "/v1/auth/logout",
            Some(&cat_token),
            None,
        )
        .await;
    assert_eq!(r.status(), 204);

    // A reset, asked for and used.
    let before = app.notices();
    let r = client
        .send(
            "c-reset",
            Method::POST,
            "/v1/password-resets",
            None,
            Some(json!({"email": "cat@example.org"})),
        )
        .await;
    assert_eq!(r.status(), 202);
    app.await_notices(before + 1).await;
    let token = app
        .last_token(
            gatehouse::identity::mail::notifier::NoticeKind::PasswordReset,
            "cat@example.org",
        )
        .unwrap();
    let r = client
        .send(
            "c-reset-confirm",
            Method::POST,
            "/v1/password-resets/confirm",
            None,
            Some(json!({"token": token, "new_password": "a reset passphrase"})),
        )
        .await;
    assert_eq!(r.status(), 204);

    // A failed sign-in: a wrong password.
    assert_eq!(
        client
            .send(
                "d-register",
                Method::POST,
                "/v1/users",
                None,
                Some(body("dog@example.org"))
            )
            .await
            .status(),
        201
    );
    let r = client
        .send(
            "d-failed",
            Method::POST,
            "/v1/auth/login",
            None,
            Some(login("dog@example.org", "wrong wrong wrong")),
        )
        .await;
    assert_eq!(r.status(), 401);

    // An admin's changes: a role, a binding, an account disabled.
    let r = client
        .send(
            "r-role",
            Method::POST,
            "/v1/authz/roles",
            Some(&root),
            Some(json!({"name": "support", "permissions": ["users:read"]})),
        )
        .await;
    assert_eq!(r.status(), 201);
    let eel_id = app.register("eel@example.org").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = client
        .send(
            "r-bind",
            Method::POST,
            "/v1/authz/bindings",
            Some(&root),
            Some(json!({"subject": format!("user:{eel_id}"), "role": "support"})),
        )
        .await;
    assert_eq!(r.status(), 201);
    let r = client
        .send(
            "r-disable",
            Method::POST,
            &format!("/v1/users/{eel_id}/disable"),
            Some(&root),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);

    // A signing key rotated from the command line: the platform's own work.
    gatehouse::auth::rotate_keys(&app.ctx, &gatehouse::auth::AuthConfig::default())
        .await
        .unwrap();

    let root_id = {
        let r = app
            .through(Method::GET, "/v1/users/me", &root)
            .send()
            .await
            .unwrap();
        r.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let expected: &[(&str, &str, Option<&str>)] = &[
        ("c-register", "identity.user.registered", Some("anonymous")),
        ("c-login", "auth.session.created", None),
        ("c-bad-login", "identity.login.failed", Some("anonymous")),
        ("c-password", "identity.password.changed", None),
        ("c-logout", "auth.session.revoked", None),
        (
            "c-reset",
            "identity.password.reset_requested",
            Some("anonymous"),
        ),
        (
            "c-reset-confirm",
            "identity.password.reset",
            Some("anonymous"),
        ),
        ("d-failed", "identity.login.failed", Some("anonymous")),
        ("r-role", "authz.role.created", Some("root")),
        ("r-bind", "authz.binding.created", Some("root")),
        ("r-disable", "identity.user.status_changed", Some("root")),
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let log = loop {
        let r = app
            .through(Method::GET, "/v1/audit/events/export", &root)
            .send()
            .await
            .unwrap();
        let log: Vec<serde_json::Value> = r
            .text()
            .await
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let rotated = log.iter().any(|e| e["action"] == "auth.key.rotated");
        let all = expected.iter().all(|(id, action, _)| {
            log.iter()
                .any(|e| e["request_id"] == *id && e["action"] == *action)
        });
        if (rotated && all) || std::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    for (id, action, actor) in expected {
        let entry = log
            .iter()
            .find(|e| e["request_id"] == *id && e["action"] == *action)
            .unwrap_or_else(|| panic!("no {action} for request {id}"));
        assert_eq!(entry["client_ip"], "127.0.0.2", "{entry}");
        assert_eq!(entry["trace_id"], trace_of(id), "{entry}");
        match actor {
            Some("root") => assert_eq!(entry["actor"], format!("user:{root_id}"), "{entry}"),
            Some(actor) => assert_eq!(entry["actor"], *actor, "{entry}"),
            // Cat's own requests: Cat signed in.
            None => assert!(
                entry["actor"].as_str().unwrap().starts_with("user:"),
                "{entry}"
            ),
        }
    }
    let rotated = log
        .iter()
        .find(|e| e["action"] == "auth.key.rotated")
        .unwrap();
    assert_eq!(rotated["actor"], "service:auth");
    assert!(
        rotated["subject"]
            .as_str()
            .unwrap()
            .starts_with("key:k4.pid."),
        "{rotated}"
    );
}

/// A service that must know its change is on the log before it answers
/// records it over gRPC; an entry at fault refuses the whole call, and an
/// event recorded already is passed over.
#[tokio::test]
async fn entries_recorded_over_grpc_are_on_the_log_once() {
    use gatehouse::proto::audit::v1::{Entry, RecordRequest, audit_client::AuditClient};
    let app = TestApp::builder().with_audit().start().await;
    let root = app.admin("root@example.org").await;
    let mut audit = AuditClient::new(app.ctx.clients.channel("audit").await.unwrap());
    let paid = |event: &str| Entry {
        event_id: event.into(),
        actor: "service:billing".into(),
        action: "billing.invoice.paid".into(),
        subject: "invoice:42".into(),
        outcome: "success".into(),
        client_ip: "198.51.100.4".into(),
        details_json: r#"{"amount_cents":1200}"#.into(),
        ..Entry::default()
    };
    let bad = Entry {
        outcome: "maybe".into(),
        ..paid("paid-3")
    };
    let refused = audit
        .record(RecordRequest {
            entries: vec![paid("paid-0"), bad],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("entries[1].outcome"),
        "{}",
        refused.message()
    );
    let seqs = audit
        .record(RecordRequest {
            entries: vec![paid("paid-1"), paid("paid-2"), paid("paid-1")],
        })
        .await
        .unwrap()
        .into_inner()
        .seqs;
    assert!(
        seqs[0] > 0 && seqs[1] == seqs[0] + 1 && seqs[2] == 0,
        "{seqs:?}"
    );
    let again = audit
        .record(RecordRequest {
            entries: vec![paid("paid-2")],
        })
        .await
        .unwrap()
        .into_inner()
        .seqs;
    assert_eq!(again, [0]);

    let r = app
        .through(
            reqwest::Method::GET,
            "/v1/audit/events?action=billing.invoice.paid",
            &root,
        )
        .send()
        .await
        .unwrap();
    let page: serde_json::Value = r.json().await.unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        2,
        "nothing of the refused call, each event once: {page}"
    );
    assert_eq!(items[0]["details"]["amount_cents"], 1200);
    assert_eq!(items[0]["actor"], "service:billing");
}
