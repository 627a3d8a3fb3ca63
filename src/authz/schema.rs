//! Diesel table definitions for the authz schema; the same on SQLite and
//! PostgreSQL (see `migrations/*/authz/`). The `outbox` table is the
//! kernel's.

diesel::table! {
    revision (id) {
        id -> Integer,
        value -> BigInt,
    }
}

diesel::table! {
    roles (name) {
        name -> Text,
        description -> Text,
        builtin -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    role_permissions (role, permission) {
        role -> Text,
        permission -> Text,
    }
}

diesel::table! {
    user_groups (id) {
        id -> Text,
        name -> Text,
        description -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    memberships (group_id, member_kind, member_id) {
        group_id -> Text,
        member_kind -> Text,
        member_id -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    bindings (id) {
        id -> Text,
        subject_kind -> Text,
        subject_id -> Text,
        role -> Text,
        scope_kind -> Text,
        scope -> Text,
        expires_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    resource_parents (child) {
        child -> Text,
        parent -> Text,
    }
}

diesel::allow_tables_to_appear_in_same_query!(roles, role_permissions, bindings);
