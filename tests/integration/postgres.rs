//! PostgreSQL specifics, on the real server (feature `it-postgres`). The
//! other suites run against PostgreSQL too under this feature.

use diesel::{Connection, QueryableByName, RunQueryDsl};

use crate::support::{TestApp, database_url};

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
            "auth.outbox",
            "auth.processed_events",
            "auth.refresh_tokens",
            "auth.sessions",
            "auth.signing_keys",
            "auth.user_revocations",
            "identity.__diesel_schema_migrations",
            "identity.outbox",
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
