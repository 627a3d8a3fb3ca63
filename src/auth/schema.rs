//! Diesel table definitions for the auth schema; the same on SQLite and
//! PostgreSQL (see `migrations/*/auth/`). The `outbox` table is the kernel's.

diesel::table! {
    signing_keys (kid) {
        kid -> Text,
        public_key -> Text,
        secret_key_enc -> Binary,
        created_at -> Timestamp,
        signs_from -> Timestamp,
        published_until -> Nullable<Timestamp>,
    }
}

diesel::table! {
    id_token_keys (kid) {
        kid -> Text,
        alg -> Text,
        public_jwk -> Text,
        secret_key_enc -> Binary,
        created_at -> Timestamp,
        signs_from -> Timestamp,
        published_until -> Nullable<Timestamp>,
    }
}

diesel::table! {
    sessions (id) {
        id -> Text,
        user_id -> Text,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        refreshed_at -> Timestamp,
        generation -> BigInt,
        revoked_at -> Nullable<Timestamp>,
        revoked_reason -> Nullable<Text>,
        client_id -> Nullable<Text>,
        scope -> Nullable<Text>,
        browser_session_id -> Nullable<Text>,
    }
}

diesel::table! {
    oidc_clients (id) {
        id -> Text,
        name -> Text,
        secret_hash -> Nullable<Text>,
        redirect_uris -> Text,
        post_logout_redirect_uris -> Text,
        web_origins -> Text,
        grant_types -> Text,
        scopes -> Text,
        id_token_alg -> Text,
        first_party -> Bool,
        require_pkce -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    oidc_codes (code_hash) {
        code_hash -> Text,
        client_id -> Text,
        user_id -> Text,
        browser_session_id -> Text,
        redirect_uri -> Text,
        code_challenge -> Nullable<Text>,
        nonce -> Nullable<Text>,
        scope -> Text,
        auth_time -> Timestamp,
        amr -> Text,
        expires_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
        session_id -> Nullable<Text>,
    }
}

diesel::table! {
    oidc_consents (user_id, client_id) {
        user_id -> Text,
        client_id -> Text,
        scope -> Text,
        granted_at -> Timestamp,
    }
}

diesel::table! {
    browser_sessions (id) {
        id -> Text,
        token_hash -> Text,
        user_id -> Text,
        auth_time -> Timestamp,
        amr -> Text,
        expires_at -> Timestamp,
        ended_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    refresh_tokens (token_hash) {
        token_hash -> Text,
        session_id -> Text,
        generation -> BigInt,
        created_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
        successor_enc -> Nullable<Binary>,
    }
}

diesel::table! {
    processed_events (event_id) {
        event_id -> Text,
        processed_at -> Timestamp,
    }
}

diesel::table! {
    user_revocations (user_id) {
        user_id -> Text,
        revoked_before -> Timestamp,
    }
}

diesel::joinable!(refresh_tokens -> sessions (session_id));
diesel::allow_tables_to_appear_in_same_query!(
    signing_keys,
    id_token_keys,
    sessions,
    refresh_tokens,
    processed_events,
    user_revocations,
    oidc_clients,
    oidc_codes,
    oidc_consents,
    browser_sessions
);
