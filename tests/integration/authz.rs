//! Authz's stored policy, on the app's database (SQLite, or PostgreSQL
//! under `it-postgres`): what is written reads back and decides checks,
//! every write is a new revision, and a refused write changes nothing.

use chrono::Utc;
use gatehouse::authz::error::AuthzError;
use gatehouse::authz::model::{
    Binding, Decision, ModelError, Permission, Policy, Resource, Role, Scope, Subject,
};
use gatehouse::authz::service::{Authz, Question};
use gatehouse::authz::{open_db, store};
use gatehouse::kernel::db::Db;
use gatehouse::proto::authz::v1 as pb;
use gatehouse::proto::authz::v1::authz_client::AuthzClient;
use uuid::Uuid;

use crate::support::{PASSWORD, TestApp, grpc_code};

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

    let by = store::By {
        actor: None,
        at: Utc::now(),
    };
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
                store::create_role(conn, &by, &reader)?,
                store::create_group(conn, &by, team, "team", "The team")?,
                store::add_member(conn, &by, team, Subject::User(ann))?,
                store::bind(conn, &by, &b)?,
                store::set_parent(
                    conn,
                    &by,
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
    let after = db
        .run(move |conn| store::unbind(conn, &by, id))
        .await
        .unwrap();
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
    let by = store::By {
        actor: None,
        at: Utc::now(),
    };
    let (outer, inner) = (Uuid::now_v7(), Uuid::now_v7());
    db.run(move |conn| {
        store::create_group(conn, &by, outer, "outer", "")?;
        store::create_group(conn, &by, inner, "inner", "")?;
        store::add_member(conn, &by, outer, Subject::Group(inner))
    })
    .await
    .unwrap();
    let before = policy(&db).await.revision;

    let refused = db
        .run(move |conn| {
            Ok::<_, AuthzError>(vec![
                store::add_member(conn, &by, inner, Subject::Group(outer)),
                store::add_member(conn, &by, Uuid::now_v7(), Subject::User(Uuid::now_v7())),
                store::create_group(conn, &by, Uuid::now_v7(), "outer", ""),
                store::bind(
                    conn,
                    &by,
                    &Binding {
                        id: Uuid::now_v7(),
                        subject: Subject::User(Uuid::now_v7()),
                        role: "nobody".into(),
                        scope: Scope::Everywhere,
                        expires_at: None,
                    },
                ),
                store::unbind(conn, &by, Uuid::now_v7()),
                store::set_parent(
                    conn,
                    &by,
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

async fn service(app: &TestApp, refresh: std::time::Duration) -> Authz {
    Authz::new(open(app).await, app.clock.clone(), DEPTH, refresh)
        .await
        .unwrap()
}

fn question(user: Uuid, permission: &str, resource: Option<&str>) -> Question {
    Question {
        subject: Subject::User(user),
        permission: permission.into(),
        resource: resource.map(Into::into),
    }
}

/// Two instances on one database: what one writes, the other answers from
/// at once when asked for that revision, and within its refresh interval
/// when not.
#[tokio::test]
async fn a_check_is_never_answered_from_a_revision_older_than_asked() {
    let app = TestApp::start().await;
    let writer = service(&app, std::time::Duration::from_secs(3600)).await;
    let reader = service(&app, std::time::Duration::from_secs(60)).await;
    let ann = Uuid::now_v7();
    let asked = question(ann, "audit:read", None);
    let (decision, seen) = reader.check(&asked, 0).await.unwrap();
    assert!(!decision.allowed());

    let revision = writer
        .bind(
            None,
            Binding {
                id: Uuid::now_v7(),
                subject: Subject::User(ann),
                role: "auditor".into(),
                scope: Scope::Everywhere,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    assert!(revision > seen);
    // The writer holds its own write at once.
    assert!(writer.check(&asked, 0).await.unwrap().0.allowed());
    // The reader still holds what it read, unless asked for the write's revision.
    assert!(!reader.check(&asked, 0).await.unwrap().0.allowed());
    let (decision, at) = reader.check(&asked, revision).await.unwrap();
    assert!(decision.allowed());
    assert_eq!(at, revision);

    // A write the reader was not told of is seen once its refresh interval
    // has passed.
    let bob = Uuid::now_v7();
    let later = writer
        .bind(
            None,
            Binding {
                id: Uuid::now_v7(),
                subject: Subject::User(bob),
                role: "admin".into(),
                scope: Scope::Everywhere,
                expires_at: None,
            },
        )
        .await
        .unwrap();
    let bobs = question(bob, "users:write", None);
    assert!(!reader.check(&bobs, 0).await.unwrap().0.allowed());
    app.clock.advance(chrono::Duration::seconds(61));
    let (decision, at) = reader.check(&bobs, 0).await.unwrap();
    assert!(decision.allowed());
    assert_eq!(at, later);

    // A revision nobody has written is an error, not a guess.
    assert!(matches!(
        reader.check(&bobs, later + 10).await,
        Err(AuthzError::RevisionAhead { .. })
    ));
}

#[tokio::test]
async fn checks_in_a_batch_share_one_revision_and_bad_questions_are_refused() {
    let app = TestApp::start().await;
    let authz = service(&app, std::time::Duration::from_secs(1)).await;
    let ann = Uuid::now_v7();
    authz
        .create_role(
            None,
            Role {
                name: "editor".into(),
                description: String::new(),
                permissions: [p("projects:*")].into(),
                builtin: false,
            },
        )
        .await
        .unwrap();
    authz
        .set_parent(None, "projects:42", "orgs:7")
        .await
        .unwrap();
    let revision = authz
        .bind(
            None,
            Binding {
                id: Uuid::now_v7(),
                subject: Subject::User(ann),
                role: "editor".into(),
                scope: Scope::Resource(Resource::parse("orgs:7").unwrap()),
                expires_at: None,
            },
        )
        .await
        .unwrap();
    let (answers, at) = authz
        .batch_check(
            &[
                question(ann, "projects:write", Some("projects:42")),
                question(ann, "projects:write", Some("projects:43")),
                question(ann, "orgs:write", Some("orgs:7")),
            ],
            revision,
        )
        .await
        .unwrap();
    assert_eq!(at, revision);
    let allowed: Vec<bool> = answers.iter().map(Decision::allowed).collect();
    assert_eq!(allowed, [true, false, false]);
    let (held, _) = authz
        .permissions(ann, Some("projects:42"), 0)
        .await
        .unwrap();
    assert_eq!(held, [p("projects:*")].into());
    let (who, _) = authz
        .subjects("projects:read", Some("projects:42"), 0)
        .await
        .unwrap();
    assert_eq!(who, [ann].into());

    for (permission, resource) in [
        ("projects", None),
        ("projects:*", None),
        ("*", None),
        ("projects:read", Some("projects")),
    ] {
        assert!(
            matches!(
                authz.check(&question(ann, permission, resource), 0).await,
                Err(AuthzError::Invalid(_))
            ),
            "{permission} {resource:?}"
        );
    }
}

/// Serves authz's gRPC API on a port of its own; a client for it.
async fn grpc(authz: Authz) -> AuthzClient<tonic::transport::Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(gatehouse::authz::grpc::server(authz))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    AuthzClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn asked(user: Uuid, permission: &str, resource: &str) -> pb::Question {
    pb::Question {
        user_id: user.to_string(),
        permission: permission.into(),
        resource: resource.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_grpc_api_explains_its_answers_and_refuses_bad_questions() {
    let app = TestApp::start().await;
    let authz = service(&app, std::time::Duration::from_secs(1)).await;
    let (ann, team) = (Uuid::now_v7(), Uuid::now_v7());
    authz
        .create_group(None, team, "team".into(), String::new())
        .await
        .unwrap();
    authz
        .add_member(None, team, Subject::User(ann))
        .await
        .unwrap();
    authz
        .set_parent(None, "projects:42", "orgs:7")
        .await
        .unwrap();
    let binding = Uuid::now_v7();
    let revision = authz
        .bind(
            None,
            Binding {
                id: binding,
                subject: Subject::Group(team),
                role: "admin".into(),
                scope: Scope::Resource(Resource::parse("orgs:7").unwrap()),
                expires_at: None,
            },
        )
        .await
        .unwrap();
    let mut client = grpc(authz).await;

    let checked = client
        .check(pb::CheckRequest {
            question: Some(asked(ann, "projects:delete", "projects:42")),
            at_least_revision: revision,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.revision, revision);
    let answer = checked.answer.unwrap();
    assert!(answer.allowed);
    let grant = answer.grant.unwrap();
    assert_eq!(grant.binding_id, binding.to_string());
    assert_eq!(grant.role, "admin");
    assert_eq!(grant.permission, "*");
    assert_eq!(grant.group_ids, [team.to_string()]);
    assert_eq!(grant.scope, "orgs:7");
    assert_eq!(grant.parents, ["orgs:7"]);

    let batch = client
        .batch_check(pb::BatchCheckRequest {
            questions: vec![
                asked(ann, "projects:read", "projects:42"),
                asked(ann, "projects:read", "projects:9"),
                asked(Uuid::now_v7(), "projects:read", "projects:42"),
            ],
            at_least_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let allowed: Vec<bool> = batch.answers.iter().map(|a| a.allowed).collect();
    assert_eq!(allowed, [true, false, false]);
    assert_eq!(batch.answers[1].denial, "not_granted");

    let held = client
        .list_permissions(pb::ListPermissionsRequest {
            user_id: ann.to_string(),
            resource: "projects:42".into(),
            at_least_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.permissions, ["*"]);
    let who = client
        .list_subjects(pb::ListSubjectsRequest {
            permission: "projects:read".into(),
            resource: "projects:42".into(),
            at_least_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.user_ids, [ann.to_string()]);

    // Bad questions: the caller's fault, named.
    for (question, code) in [
        (asked(ann, "projects", ""), "validation_failed"),
        (asked(ann, "projects:read", "projects"), "validation_failed"),
        (
            pb::Question {
                user_id: "not-an-id".into(),
                ..asked(ann, "projects:read", "")
            },
            "validation_failed",
        ),
    ] {
        let refused = client
            .check(pb::CheckRequest {
                question: Some(question),
                at_least_revision: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(grpc_code(&refused), code);
    }
    let ahead = client
        .check(pb::CheckRequest {
            question: Some(asked(ann, "projects:read", "")),
            at_least_revision: revision + 100,
        })
        .await
        .unwrap_err();
    assert_eq!(ahead.code(), tonic::Code::FailedPrecondition);
    assert_eq!(grpc_code(&ahead), "revision_ahead");
    let too_many = client
        .batch_check(pb::BatchCheckRequest {
            questions: vec![asked(ann, "projects:read", ""); 101],
            at_least_revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
}

/// Waits (up to 5 s) until the stored policy satisfies `done`.
async fn until(db: &Db, done: impl Fn(&Policy) -> bool) -> Policy {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now = policy(db).await;
        if done(&now) {
            return now;
        }
        assert!(std::time::Instant::now() < deadline, "not reached in 5 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_registered_user_gets_the_user_role_and_a_deleted_one_keeps_no_binding() {
    let app = TestApp::start().await;
    let config = gatehouse::authz::AuthzConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let _running = gatehouse::authz::start(&app.ctx, config).await.unwrap();
    let db = open(&app).await;
    let user = app.register("ann@example.org").await;
    let ann = Uuid::parse_str(user["id"].as_str().unwrap()).unwrap();
    let roles = |policy: &Policy| -> Vec<(String, Scope)> {
        policy
            .bindings_of(Subject::User(ann))
            .map(|b| (b.role.clone(), b.scope.clone()))
            .collect()
    };
    let bound = until(&db, |p| !roles(p).is_empty()).await;
    assert_eq!(roles(&bound), [("user".to_owned(), Scope::Everywhere)]);

    // The same event handled again binds nothing more.
    let authz = service(&app, std::time::Duration::from_secs(1)).await;
    let registered = gatehouse::kernel::bus::Envelope {
        id: Uuid::now_v7().to_string(),
        r#type: "identity.user.registered".into(),
        source: "identity".into(),
        subject: ann.to_string(),
        occurred_at_unix_ms: 0,
        payload: prost::Message::encode_to_vec(&gatehouse::proto::events::v1::UserEvent {
            user_id: ann.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let delivery = gatehouse::kernel::bus::Delivery {
        event: registered,
        position: None,
    };
    authz.on_identity_event(delivery).await.unwrap();
    let again = policy(&db).await;
    assert_eq!(again.revision, bound.revision);
    assert_eq!(roles(&again).len(), 1);

    // A group membership of hers goes with her account too.
    let team = Uuid::now_v7();
    authz
        .create_group(None, team, "team".into(), String::new())
        .await
        .unwrap();
    authz
        .add_member(None, team, Subject::User(ann))
        .await
        .unwrap();
    let token = app.login("ann@example.org", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let gone = app
        .http
        .delete(format!("{}/v1/users/me", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 204);
    let after = until(&db, |p| roles(p).is_empty()).await;
    let mut probe = after.clone();
    probe.add_binding(Binding {
        id: Uuid::now_v7(),
        subject: Subject::Group(team),
        role: "admin".into(),
        scope: Scope::Everywhere,
        expires_at: None,
    });
    assert!(
        !probe
            .check(ann, &p("users:read"), None, Utc::now())
            .allowed(),
        "she is in the team no more"
    );
}
