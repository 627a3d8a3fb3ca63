//! Authz's stored policy, on the app's database (SQLite, or PostgreSQL
//! under `it-postgres`): what is written reads back and decides checks,
//! every write is a new revision, and a refused write changes nothing.

use chrono::Utc;
use gatehouse::authz::error::AuthzError;
use gatehouse::authz::model::{
    Binding, Decision, ModelError, Permission, Policy, Resource, Role, Scope, Subject,
};
use gatehouse::authz::{open_db, store};
use gatehouse::kernel::db::Db;
use uuid::Uuid;

use crate::support::TestApp;

const DEPTH: usize = 8;

async fn policy(db: &Db) -> Policy {
    db.run(|conn| store::load(conn, DEPTH)).await.unwrap()
}

fn p(text: &str) -> Permission {
    Permission::parse(text).unwrap()
}

async fn open(app: &TestApp) -> Db {
    open_db(&app.ctx.database, &app.ctx.data_dir).await.unwrap()
}

#[tokio::test]
async fn the_stored_policy_reads_back_and_decides_as_written() {
    let app = TestApp::start().await;
    let db = open(&app).await;
    let fresh = policy(&db).await;
    assert_eq!(fresh.revision, 1);
    for builtin in ["admin", "user", "auditor"] {
        assert!(fresh.role(builtin).unwrap().builtin, "{builtin}");
    }
    assert!(
        fresh
            .role("admin")
            .unwrap()
            .permissions
            .contains(&Permission::All)
    );

    let now = Utc::now().naive_utc();
    let (ann, team) = (Uuid::now_v7(), Uuid::now_v7());
    let reader = Role {
        name: "reader".into(),
        description: "Reads projects".into(),
        permissions: [p("projects:read")].into(),
        builtin: false,
    };
    let binding = Binding {
        id: Uuid::now_v7(),
        subject: Subject::Group(team),
        role: "reader".into(),
        scope: Scope::Resource(Resource::parse("orgs:7").unwrap()),
        expires_at: None,
    };
    let b = binding.clone();
    let revisions = db
        .run(move |conn| {
            Ok::<_, AuthzError>([
                store::create_role(conn, &reader, now)?,
                store::create_group(conn, team, "team", "The team", now)?,
                store::add_member(conn, team, Subject::User(ann), now)?,
                store::bind(conn, &b, now)?,
                store::set_parent(
                    conn,
                    &Resource::parse("projects:42").unwrap(),
                    &Resource::parse("orgs:7").unwrap(),
                    DEPTH,
                )?,
            ])
        })
        .await
        .unwrap();
    assert_eq!(revisions, [2, 3, 4, 5, 6]);

    let stored = policy(&db).await;
    assert_eq!(stored.revision, 6);
    let project = Resource::parse("projects:42").unwrap();
    let Decision::Allowed(grant) =
        stored.check(ann, &p("projects:read"), Some(&project), Utc::now())
    else {
        panic!("ann reads the project through her team and its org")
    };
    assert_eq!(grant.binding, binding.id);
    assert_eq!(grant.groups, [team]);
    assert_eq!(grant.parents, [Resource::parse("orgs:7").unwrap()]);
    assert!(
        !stored
            .check(ann, &p("projects:write"), Some(&project), Utc::now())
            .allowed()
    );

    let id = binding.id;
    let after = db.run(move |conn| store::unbind(conn, id)).await.unwrap();
    assert_eq!(after, 7);
    assert!(
        !policy(&db)
            .await
            .check(ann, &p("projects:read"), Some(&project), Utc::now())
            .allowed()
    );
}

#[tokio::test]
async fn a_refused_write_changes_nothing() {
    let app = TestApp::start().await;
    let db = open(&app).await;
    let now = Utc::now().naive_utc();
    let (outer, inner) = (Uuid::now_v7(), Uuid::now_v7());
    db.run(move |conn| {
        store::create_group(conn, outer, "outer", "", now)?;
        store::create_group(conn, inner, "inner", "", now)?;
        store::add_member(conn, outer, Subject::Group(inner), now)
    })
    .await
    .unwrap();
    let before = policy(&db).await.revision;

    let refused = db
        .run(move |conn| {
            Ok::<_, AuthzError>(vec![
                store::add_member(conn, inner, Subject::Group(outer), now),
                store::add_member(conn, Uuid::now_v7(), Subject::User(Uuid::now_v7()), now),
                store::create_group(conn, Uuid::now_v7(), "outer", "", now),
                store::bind(
                    conn,
                    &Binding {
                        id: Uuid::now_v7(),
                        subject: Subject::User(Uuid::now_v7()),
                        role: "nobody".into(),
                        scope: Scope::Everywhere,
                        expires_at: None,
                    },
                    now,
                ),
                store::unbind(conn, Uuid::now_v7()),
                store::set_parent(
                    conn,
                    &Resource::parse("orgs:7").unwrap(),
                    &Resource::parse("orgs:7").unwrap(),
                    DEPTH,
                ),
            ])
        })
        .await
        .unwrap();
    assert!(matches!(
        refused[0],
        Err(AuthzError::Invalid(ModelError::GroupCycle))
    ));
    assert!(matches!(refused[1], Err(AuthzError::NotFound(_))));
    assert!(matches!(refused[2], Err(AuthzError::Exists(_))));
    assert!(matches!(refused[3], Err(AuthzError::NotFound(_))));
    assert!(matches!(refused[4], Err(AuthzError::NotFound(_))));
    assert!(matches!(
        refused[5],
        Err(AuthzError::Invalid(ModelError::ParentCycle))
    ));

    let after = policy(&db).await;
    assert_eq!(
        after.revision, before,
        "no refused write moved the revision"
    );
    // The circle was not written: a member of outer is not in inner, so a
    // binding of inner's does not reach them.
    let (ann, now) = (Uuid::now_v7(), Utc::now());
    let mut probe = after.clone();
    probe.load_member(outer, Subject::User(ann));
    probe.add_role(Role {
        name: "r".into(),
        description: String::new(),
        permissions: [p("x:y")].into(),
        builtin: false,
    });
    probe.add_binding(Binding {
        id: Uuid::now_v7(),
        subject: Subject::Group(inner),
        role: "r".into(),
        scope: Scope::Everywhere,
        expires_at: None,
    });
    assert!(!probe.check(ann, &p("x:y"), None, now).allowed());
}
