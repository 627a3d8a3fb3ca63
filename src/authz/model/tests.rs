//! The model's decisions, on policies built here: grants and their
//! explanations, nested groups, scopes and parents, expiry, and kept
//! reaches deciding as plain ones.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::*;

fn p(text: &str) -> Permission {
    Permission::parse(text).unwrap()
}

fn r(text: &str) -> Resource {
    Resource::parse(text).unwrap()
}

fn role(name: &str, permissions: &[&str]) -> Role {
    Role {
        name: name.into(),
        description: String::new(),
        permissions: permissions.iter().map(|t| p(t)).collect(),
        builtin: false,
    }
}

fn bind(subject: Subject, role: &str, scope: Scope) -> Binding {
    Binding {
        id: Uuid::now_v7(),
        subject,
        role: role.into(),
        scope,
        expires_at: None,
    }
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// A check from an indexed reach (kept by the service between checks)
/// answers exactly as one from a plain reach, explanation and all, on a
/// policy with nested groups, wildcards, parents, scopes and expiry.
#[test]
fn an_indexed_reach_decides_as_a_plain_one() {
    let mut policy = Policy::new(1, 4);
    let kinds = ["docs", "projects", "orgs"];
    policy.add_role(role("all", &["*"]));
    policy.add_role(role("docs-any", &["docs:*"]));
    policy.add_role(role("reader", &["docs:read", "projects:read"]));
    policy.add_role(role("writer", &["projects:write", "projects:read"]));
    let users: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let groups: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    for pair in groups.windows(2) {
        policy.add_member(pair[0], Subject::Group(pair[1])).unwrap();
    }
    policy
        .add_member(groups[3], Subject::User(users[0]))
        .unwrap();
    policy
        .add_member(groups[1], Subject::User(users[1]))
        .unwrap();
    policy
        .add_member(groups[2], Subject::User(users[1]))
        .unwrap();
    policy.set_parent(r("projects:1"), r("orgs:1")).unwrap();
    policy.set_parent(r("docs:1"), r("projects:1")).unwrap();
    let scopes = [
        Scope::Everywhere,
        Scope::Type("projects".into()),
        Scope::Resource(r("orgs:1")),
        Scope::Resource(r("projects:1")),
    ];
    let subjects: Vec<Subject> = users
        .iter()
        .map(|u| Subject::User(*u))
        .chain(groups.iter().map(|g| Subject::Group(*g)))
        .collect();
    for (i, subject) in subjects.iter().enumerate() {
        for (j, name) in ["reader", "writer", "docs-any", "all"].iter().enumerate() {
            if (i + j) % 3 == 0 {
                let mut binding = bind(*subject, name, scopes[(i * j) % scopes.len()].clone());
                if (i + j) % 2 == 1 {
                    binding.expires_at = Some(now() - chrono::Duration::seconds(1));
                }
                policy.add_binding(binding);
            }
        }
    }
    let mut compared = 0;
    for user in &users {
        let (plain, indexed) = (
            policy.reach(Subject::User(*user)),
            policy.reach_indexed(Subject::User(*user)),
        );
        for kind in kinds {
            for action in ["read", "write", "delete"] {
                let asked = p(&format!("{kind}:{action}"));
                for resource in [
                    None,
                    Some(r(&format!("{kind}:1"))),
                    Some(r(&format!("{kind}:2"))),
                ] {
                    assert_eq!(
                        policy.check_from(&plain, &asked, resource.as_ref(), now()),
                        policy.check_from(&indexed, &asked, resource.as_ref(), now()),
                        "{asked} at {resource:?}"
                    );
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 4 * 3 * 3 * 3);
    let allowed = users
        .iter()
        .filter(|u| {
            policy
                .check(**u, &p("docs:read"), Some(&r("docs:1")), now())
                .allowed()
        })
        .count();
    assert!(
        allowed > 0,
        "the policy allows something, so the comparison says something"
    );
}

#[test]
fn a_check_is_allowed_by_a_binding_and_says_which() {
    let (ann, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let mut policy = Policy::new(1, 8);
    policy.add_role(role("reader", &["users:read"]));
    let binding = bind(Subject::User(ann), "reader", Scope::Everywhere);
    let id = binding.id;
    policy.add_binding(binding);
    let Decision::Allowed(grant) = policy.check(ann, &p("users:read"), None, now()) else {
        panic!("ann may read users")
    };
    assert_eq!(grant.binding, id);
    assert_eq!(grant.role, "reader");
    assert_eq!(grant.permission, p("users:read"));
    assert!(grant.groups.is_empty() && grant.parents.is_empty());
    assert_eq!(
        policy.check(ann, &p("users:write"), None, now()),
        Decision::Denied(Denial::NotGranted)
    );
    assert_eq!(
        policy.check(bob, &p("users:read"), None, now()),
        Decision::Denied(Denial::NotGranted)
    );
}

/// A client holds its own bindings only: a binding of the client is not
/// the user's with the same id, nor the other way round, and the users
/// who hold a permission never include a client.
#[test]
fn a_client_holds_its_own_bindings_and_is_never_taken_for_a_user() {
    let id = Uuid::new_v4();
    let mut policy = Policy::new(1, 8);
    policy.add_role(role("exporter", &["reports:read"]));
    policy.add_binding(bind(Subject::Client(id), "exporter", Scope::Everywhere));
    let client = policy.reach(Subject::Client(id));
    assert!(
        policy
            .check_from(&client, &p("reports:read"), None, now())
            .allowed()
    );
    assert!(
        !policy
            .check_from(&client, &p("reports:write"), None, now())
            .allowed()
    );
    assert!(!policy.check(id, &p("reports:read"), None, now()).allowed());
    assert!(policy.subjects(&p("reports:read"), None, now()).is_empty());
    policy.add_binding(bind(Subject::User(id), "exporter", Scope::Everywhere));
    assert_eq!(
        policy.subjects(&p("reports:read"), None, now()),
        [id].into()
    );
}

#[test]
fn nested_groups_pass_their_bindings_down_and_refuse_circles() {
    let ann = Uuid::now_v7();
    let (staff, admins, outer) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let mut policy = Policy::new(1, 8);
    policy.add_role(role("auditor", &["audit:read"]));
    policy.add_member(admins, Subject::User(ann)).unwrap();
    policy.add_member(staff, Subject::Group(admins)).unwrap();
    policy.add_member(outer, Subject::Group(staff)).unwrap();
    policy.add_binding(bind(Subject::Group(outer), "auditor", Scope::Everywhere));
    let Decision::Allowed(grant) = policy.check(ann, &p("audit:read"), None, now()) else {
        panic!("ann is in outer through two groups")
    };
    assert_eq!(grant.groups, [admins, staff, outer]);
    assert_eq!(
        policy.subjects(&p("audit:read"), None, now()),
        BTreeSet::from([ann])
    );

    assert_eq!(
        policy.add_member(admins, Subject::Group(outer)),
        Err(ModelError::GroupCycle)
    );
    assert_eq!(
        policy.add_member(staff, Subject::Group(staff)),
        Err(ModelError::GroupCycle)
    );
    // The refused edges changed nothing: the path is as it was.
    let Decision::Allowed(again) = policy.check(ann, &p("audit:read"), None, now()) else {
        panic!("still allowed")
    };
    assert_eq!(again.groups, [admins, staff, outer]);
}

#[test]
fn scopes_hold_at_their_resource_its_type_and_everything_under_it() {
    let ann = Uuid::now_v7();
    let mut policy = Policy::new(1, 2);
    policy.add_role(role("editor", &["projects:*"]));
    policy.set_parent(r("projects:42"), r("orgs:7")).unwrap();
    policy.set_parent(r("orgs:7"), r("tenants:1")).unwrap();
    policy.add_binding(bind(
        Subject::User(ann),
        "editor",
        Scope::Resource(r("orgs:7")),
    ));

    let Decision::Allowed(grant) =
        policy.check(ann, &p("projects:write"), Some(&r("projects:42")), now())
    else {
        panic!("a binding on the parent covers the child")
    };
    assert_eq!(grant.parents, [r("orgs:7")]);
    assert_eq!(grant.permission, p("projects:*"));
    assert!(
        !policy
            .check(ann, &p("projects:write"), Some(&r("projects:43")), now())
            .allowed()
    );
    assert!(
        !policy
            .check(ann, &p("projects:write"), Some(&r("tenants:1")), now())
            .allowed()
    );
    assert!(
        !policy
            .check(ann, &p("projects:write"), None, now())
            .allowed()
    );

    // The depth is bounded, and a circle refused.
    assert_eq!(
        policy.set_parent(r("tenants:1"), r("regions:eu")),
        Err(ModelError::TooDeep(2))
    );
    assert_eq!(
        policy.set_parent(r("tenants:1"), r("projects:42")),
        Err(ModelError::ParentCycle)
    );

    let bob = Uuid::now_v7();
    policy.add_binding(bind(
        Subject::User(bob),
        "editor",
        Scope::Type("projects".into()),
    ));
    assert!(
        policy
            .check(bob, &p("projects:read"), Some(&r("projects:99")), now())
            .allowed()
    );
    assert!(
        policy
            .check(bob, &p("projects:read"), None, now())
            .allowed()
    );
    assert!(
        !policy
            .check(bob, &p("projects:read"), Some(&r("orgs:7")), now())
            .allowed()
    );
    assert_eq!(
        policy.subjects(&p("projects:read"), Some(&r("projects:42")), now()),
        BTreeSet::from([ann, bob])
    );
    assert_eq!(
        policy.permissions(ann, Some(&r("projects:42")), now()),
        BTreeSet::from([p("projects:*")])
    );
    assert!(policy.permissions(ann, None, now()).is_empty());
}

#[test]
fn expired_bindings_grant_nothing_and_the_denial_says_so() {
    let ann = Uuid::now_v7();
    let mut policy = Policy::new(1, 8);
    policy.add_role(role("admin", &["*"]));
    let mut until = bind(Subject::User(ann), "admin", Scope::Everywhere);
    let end = now() - chrono::Duration::minutes(1);
    until.expires_at = Some(end);
    policy.add_binding(until.clone());
    assert_eq!(
        policy.check(ann, &p("users:read"), None, now()),
        Decision::Denied(Denial::Expired(end))
    );
    assert!(
        policy
            .check(
                ann,
                &p("users:read"),
                None,
                end - chrono::Duration::seconds(1)
            )
            .allowed()
    );
    assert!(policy.permissions(ann, None, now()).is_empty());
    assert!(policy.subjects(&p("users:read"), None, now()).is_empty());
}

#[test]
fn an_allowance_holds_until_the_latest_end_of_the_bindings_behind_it() {
    let ann = Uuid::now_v7();
    let group = Uuid::now_v7();
    let mut policy = Policy::new(1, 8);
    policy.add_role(role("reader", &["users:read"]));
    policy.add_member(group, Subject::User(ann)).unwrap();
    let soon = now() + chrono::Duration::minutes(1);
    let later = now() + chrono::Duration::minutes(5);
    let mut own = bind(Subject::User(ann), "reader", Scope::Everywhere);
    own.expires_at = Some(soon);
    policy.add_binding(own);
    let holds = |policy: &Policy| match policy.check(ann, &p("users:read"), None, now()) {
        Decision::Allowed(grant) => grant.holds_until,
        other => panic!("{other:?}"),
    };
    assert_eq!(holds(&policy), Some(soon));
    // The group's binding lasts longer: the answer holds as long.
    let mut through_group = bind(Subject::Group(group), "reader", Scope::Everywhere);
    through_group.expires_at = Some(later);
    policy.add_binding(through_group);
    assert_eq!(holds(&policy), Some(later));
    // One that never ends: no end.
    policy.add_binding(bind(
        Subject::User(ann),
        "reader",
        Scope::Type("users".into()),
    ));
    assert_eq!(holds(&policy), None);
}

#[test]
fn the_shortest_explanation_is_the_one_given() {
    let ann = Uuid::now_v7();
    let group = Uuid::now_v7();
    let mut policy = Policy::new(1, 8);
    policy.add_role(role("reader", &["users:read"]));
    policy.add_member(group, Subject::User(ann)).unwrap();
    policy.add_binding(bind(Subject::Group(group), "reader", Scope::Everywhere));
    let own = bind(Subject::User(ann), "reader", Scope::Everywhere);
    let own_id = own.id;
    policy.add_binding(own);
    let Decision::Allowed(grant) = policy.check(ann, &p("users:read"), None, now()) else {
        panic!("allowed twice over")
    };
    assert_eq!(grant.binding, own_id);
    assert!(grant.groups.is_empty());
}
