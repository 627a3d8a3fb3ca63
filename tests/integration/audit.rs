//! The audit log's chain on the app's database (SQLite, or PostgreSQL
//! under `it-postgres`): entries read back as they were appended, an event
//! is recorded once, and rows changed, removed or added behind the store's
//! back are named by verification.

use chrono::{Duration, Utc};
use diesel::{ExpressionMethods, RunQueryDsl};
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
    let key = AuditKey::load(&dir).unwrap().public;
    db.run(move |conn| store::verify(conn, &key)).await.unwrap()
}

/// Where the tests keep audit's key: one for the whole run, as a data
/// directory keeps one.
fn db_key_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("gatehouse-test-audit-key")
}

async fn sql(db: &Db, statement: &'static str) {
    db.run(move |conn| Ok::<_, AuditError>(diesel::sql_query(statement).execute(conn)?))
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
        .run(move |conn| store::append(conn, &first))
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
        .run(move |conn| store::append(conn, &again))
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
    db.run(move |conn| {
        use gatehouse::audit::schema::entries;
        let f = &forged.fields;
        Ok::<_, AuditError>(
            diesel::insert_into(entries::table)
                .values((
                    entries::seq.eq(forged.seq),
                    entries::id.eq(forged.id.to_string()),
                    entries::event_id.eq(&f.event_id),
                    entries::at.eq(f.at.naive_utc()),
                    entries::actor.eq(&f.actor),
                    entries::action.eq(&f.action),
                    entries::subject.eq(&f.subject),
                    entries::outcome.eq(&f.outcome),
                    entries::client_ip.eq(&f.client_ip),
                    entries::request_id.eq(&f.request_id),
                    entries::trace_id.eq(&f.trace_id),
                    entries::details.eq(&f.details),
                    entries::prev_hash.eq(&forged.prev_hash),
                    entries::hash.eq(&forged.hash),
                ))
                .execute(conn)?,
        )
    })
    .await
    .unwrap();
    assert_eq!(verify(&db).await, Err(Finding::Inserted(6)));
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

#[tokio::test]
async fn retention_removes_old_entries_up_to_a_checkpoint_and_what_remains_verifies() {
    let app = TestApp::start().await;
    let db = open_db(&app.ctx.database, &app.ctx.data_dir).await.unwrap();
    let old = Utc::now() - Duration::days(100);
    let append = |entries: Vec<NewEntry>| db.run(move |conn| store::append(conn, &entries));
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
    let removed = db.run(move |conn| store::retain(conn, old)).await.unwrap();
    assert_eq!(removed, 0);
    let removed = db
        .run(|conn| store::retain(conn, Utc::now() - Duration::days(30)))
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
