//! PostgreSQL specifics, on the real server (feature `it-postgres`). The
//! other suites run against PostgreSQL too under this feature.

use diesel::{Connection, QueryableByName, RunQueryDsl};
use gatehouse::kernel::clock::Clock as _;

use crate::support::{PASSWORD, TestApp, database_url, login_response};

#[derive(QueryableByName)]
struct Located {
    #[diesel(sql_type = diesel::sql_types::Text)]
    table_schema: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    table_name: String,
}

#[tokio::test]
async fn each_service_keeps_its_tables_in_its_own_schema() {
    let app = TestApp::start().await;
    app.register("pg@example.org").await;
    let url = app.ctx.database.url.clone();
    assert!(url.ends_with(&app_database(&url)));
    let found: Vec<Located> = tokio::task::spawn_blocking(move || {
        let mut conn = diesel::PgConnection::establish(&url).unwrap();
        diesel::sql_query(
            "SELECT table_schema::text AS table_schema, table_name::text AS table_name \
             FROM information_schema.tables \
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
        )
        .load(&mut conn)
        .unwrap()
    })
    .await
    .unwrap();
    let mut names: Vec<String> = found
        .iter()
        .map(|l| format!("{}.{}", l.table_schema, l.table_name))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "auth.__diesel_schema_migrations",
            "auth.browser_sessions",
            "auth.consumed",
            "auth.id_token_keys",
            "auth.oidc_clients",
            "auth.oidc_codes",
            "auth.oidc_consents",
            "auth.outbox",
            "auth.outbox_head",
            "auth.processed_events",
            "auth.refresh_tokens",
            "auth.sessions",
            "auth.signing_keys",
            "auth.user_revocations",
            "identity.__diesel_schema_migrations",
            "identity.mail_queue",
            "identity.outbox",
            "identity.outbox_head",
            "identity.user_tokens",
            "identity.users",
        ]
    );
}

fn app_database(url: &str) -> String {
    let name = url.rsplit('/').next().unwrap().to_owned();
    assert_eq!(database_url(&name), url);
    name
}

/// How many of this database's sessions wait for a lock.
fn lock_waiters(conn: &mut diesel::PgConnection) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .get_result::<Count>(conn)
    .unwrap()
    .n
}

/// Waits (up to 10 s) until `n` sessions of the database wait for a lock.
fn await_waiters(conn: &mut diesel::PgConnection, n: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while lock_waiters(conn) < n {
        assert!(std::time::Instant::now() < deadline, "never {n} waiting");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A table of the app's database locked by a transaction of its own,
/// until released.
struct Held {
    release: std::sync::mpsc::Sender<()>,
    holder: std::thread::JoinHandle<()>,
}

impl Held {
    /// Locks `table` in `mode` (`SHARE`, `ACCESS EXCLUSIVE`, ...).
    async fn table(app: &TestApp, table: &str, mode: &str) -> Held {
        let url = app.ctx.database.url.clone();
        let lock = format!("LOCK TABLE {table} IN {mode} MODE");
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (locked_tx, locked) = tokio::sync::oneshot::channel();
        let holder = std::thread::spawn(move || {
            let mut conn = diesel::PgConnection::establish(&url).unwrap();
            diesel::sql_query("BEGIN").execute(&mut conn).unwrap();
            diesel::sql_query(lock).execute(&mut conn).unwrap();
            locked_tx.send(()).unwrap();
            released.recv().unwrap();
            diesel::sql_query("COMMIT").execute(&mut conn).unwrap();
        });
        locked.await.unwrap();
        Held { release, holder }
    }

    fn release(self) {
        self.release.send(()).unwrap();
        self.holder.join().unwrap();
    }
}

#[tokio::test]
async fn a_login_under_way_while_all_sessions_end_leaves_no_live_session() {
    use prost::Message;
    let app = TestApp::start().await;
    let user = app.register("window@example.org").await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    // Holds the mark's table, so that the login stops at its read of the
    // mark, its session written but not committed, and the revocation
    // stops where it writes the mark: the narrowest window, held open.
    let held = Held::table(&app, "auth.user_revocations", "ACCESS EXCLUSIVE").await;
    let watch_url = app.ctx.database.url.clone();
    let mut watch =
        tokio::task::spawn_blocking(move || diesel::PgConnection::establish(&watch_url).unwrap())
            .await
            .unwrap();
    let login = {
        let (http, auth) = (app.http.clone(), app.auth_base.clone());
        tokio::spawn(async move {
            login_response(&http, &auth, "window@example.org", PASSWORD)
                .await
                .status()
                .as_u16()
        })
    };
    watch = tokio::task::spawn_blocking(move || {
        await_waiters(&mut watch, 1);
        watch
    })
    .await
    .unwrap();
    // A reset, stamped after the login began.
    let payload = gatehouse::proto::events::v1::UserEvent {
        user_id: user_id.clone(),
        ..Default::default()
    };
    let event_id = uuid::Uuid::now_v7().to_string();
    app.ctx
        .bus
        .publish(gatehouse::kernel::bus::Envelope {
            id: event_id.clone(),
            r#type: "identity.password.reset".into(),
            source: "identity".into(),
            subject: user_id.clone(),
            occurred_at_unix_ms: (app.clock.now() + chrono::Duration::seconds(1))
                .timestamp_millis(),
            payload: payload.encode_to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut watch = tokio::task::spawn_blocking(move || {
        await_waiters(&mut watch, 2);
        watch
    })
    .await
    .unwrap();
    held.release();
    let status = login.await.unwrap();
    assert!(status == 200 || status == 401, "{status}");
    // Once the reset is handled, no session of the user is live.
    let live = tokio::task::spawn_blocking(move || {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let count = |conn: &mut diesel::PgConnection, sql: &str, bind: &str| {
            diesel::sql_query(sql)
                .bind::<diesel::sql_types::Text, _>(bind)
                .get_result::<Count>(conn)
                .unwrap()
                .n
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while count(
            &mut watch,
            "SELECT count(*) AS n FROM auth.processed_events WHERE event_id = $1",
            &event_id,
        ) == 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the reset was never handled"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        count(
            &mut watch,
            "SELECT count(*) AS n FROM auth.sessions WHERE user_id = $1 AND revoked_at IS NULL",
            &user_id,
        )
    })
    .await
    .unwrap();
    assert_eq!(
        live, 0,
        "a session opened by a login under way outlived the reset"
    );
}

#[tokio::test]
async fn auth_replicas_looking_at_once_publish_one_key_between_them() {
    use gatehouse::auth::keys::{Kek, KeyRing};
    let app = TestApp::start().await;
    let ring = || async {
        let db = gatehouse::auth::open_db(&app.ctx.database, &app.ctx.data_dir)
            .await
            .unwrap();
        let kek = Kek::load("", &app.ctx.data_dir).unwrap();
        KeyRing::new(
            db,
            kek,
            app.ctx.clock.clone(),
            chrono::Duration::seconds(300),
            chrono::Duration::seconds(900),
        )
    };
    let (first, second) = (ring().await, ring().await);
    let url = app.ctx.database.url.clone();
    let keys = move || {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = diesel::PgConnection::establish(&url).unwrap();
        diesel::sql_query("SELECT count(*) AS n FROM auth.signing_keys")
            .get_result::<Count>(&mut conn)
            .unwrap()
            .n
    };
    let count = keys.clone();
    let before = tokio::task::spawn_blocking(count).await.unwrap();
    // The key is a day old. The key table is held against writes while
    // both replicas look, so that both look before either has written its
    // key: the widest window.
    app.clock.advance(chrono::Duration::days(1));
    let held = Held::table(&app, "auth.signing_keys", "SHARE").await;
    let every = chrono::Duration::hours(1);
    let (a, b) = (first.clone(), second.clone());
    let looks = [
        tokio::spawn(async move { a.rotate_when_older_than(every).await.unwrap() }),
        tokio::spawn(async move { b.rotate_when_older_than(every).await.unwrap() }),
    ];
    let watch_url = app.ctx.database.url.clone();
    tokio::task::spawn_blocking(move || {
        let mut watch = diesel::PgConnection::establish(&watch_url).unwrap();
        await_waiters(&mut watch, 2);
    })
    .await
    .unwrap();
    held.release();
    let mut rotated = Vec::new();
    for look in looks {
        rotated.extend(look.await.unwrap());
    }
    assert_eq!(rotated.len(), 1, "one of the two rotates: {rotated:?}");
    let after = tokio::task::spawn_blocking(keys).await.unwrap();
    assert_eq!(after, before + 1);
    // The next look, within the hour, finds the new key young enough.
    assert_eq!(first.rotate_when_older_than(every).await.unwrap(), None);
}
