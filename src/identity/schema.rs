//! Diesel table definitions for the identity schema; the same on SQLite and
//! PostgreSQL (see `migrations/*/identity/`). The `outbox` table is the
//! kernel's (`crate::kernel::outbox`).

diesel::table! {
    users (id) {
        id -> Text,
        email -> Text,
        email_normalized -> Text,
        display_name -> Text,
        status -> Text,
        email_verified -> Bool,
        password_hash -> Text,
        failed_logins -> Integer,
        locked_until -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        version -> BigInt,
    }
}

diesel::table! {
    user_tokens (token_hash) {
        token_hash -> Text,
        user_id -> Text,
        purpose -> Text,
        expires_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
    }
}

diesel::joinable!(user_tokens -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(users, user_tokens, mail_queue);

diesel::table! {
    mail_queue (id) {
        id -> Text,
        kind -> Text,
        user_id -> Text,
        recipient -> Text,
        sealed -> Binary,
        attempts -> Integer,
        due_at -> Timestamp,
        expires_at -> Timestamp,
        created_at -> Timestamp,
    }
}

diesel::joinable!(mail_queue -> users (user_id));
