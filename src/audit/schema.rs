//! Diesel table definitions for the audit schema; the same on SQLite and
//! PostgreSQL (see `migrations/*/audit/`).

diesel::table! {
    chain_head (id) {
        id -> Integer,
        seq -> BigInt,
        hash -> Text,
    }
}

diesel::table! {
    entries (seq) {
        seq -> BigInt,
        id -> Text,
        event_id -> Nullable<Text>,
        at -> Timestamp,
        actor -> Text,
        action -> Text,
        subject -> Text,
        outcome -> Text,
        client_ip -> Text,
        request_id -> Text,
        trace_id -> Text,
        details -> Text,
        prev_hash -> Text,
        hash -> Text,
        mac -> Text,
    }
}

diesel::table! {
    checkpoints (seq) {
        seq -> BigInt,
        hash -> Text,
        at -> Timestamp,
        key_id -> Text,
        signature -> Text,
    }
}

diesel::table! {
    markers (kind) {
        kind -> Text,
        seq -> BigInt,
        hash -> Text,
        at -> Timestamp,
        key_id -> Text,
        signature -> Text,
    }
}
