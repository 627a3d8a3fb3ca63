-- The OpenID Connect provider's state. Lists (redirect URIs, grants,
-- scopes, origins) are JSON arrays of strings.
CREATE TABLE oidc_clients (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    -- SHA-256 of the secret, hex; NULL for a public client.
    secret_hash TEXT,
    redirect_uris TEXT NOT NULL,
    post_logout_redirect_uris TEXT NOT NULL,
    web_origins TEXT NOT NULL,
    grant_types TEXT NOT NULL,
    scopes TEXT NOT NULL,
    id_token_alg TEXT NOT NULL,
    first_party BOOLEAN NOT NULL,
    -- Whether its authorization requests must carry a PKCE challenge
    -- (always, for a public client).
    require_pkce BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

-- Authorization codes, by the SHA-256 of the code. A code is used once:
-- the exchange sets used_at and the session it opened.
CREATE TABLE oidc_codes (
    code_hash TEXT PRIMARY KEY NOT NULL,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    browser_session_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    code_challenge TEXT,
    nonce TEXT,
    scope TEXT NOT NULL,
    auth_time TIMESTAMP NOT NULL,
    amr TEXT NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    used_at TIMESTAMP,
    session_id TEXT
);

CREATE INDEX oidc_codes_by_expiry ON oidc_codes (expires_at);

-- What a user has let a client have: the scopes granted, space-separated.
CREATE TABLE oidc_consents (
    user_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    granted_at TIMESTAMP NOT NULL,
    PRIMARY KEY (user_id, client_id)
);

-- A browser signed in to the hosted pages, by the SHA-256 of its cookie.
CREATE TABLE browser_sessions (
    id TEXT PRIMARY KEY NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    auth_time TIMESTAMP NOT NULL,
    amr TEXT NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    ended_at TIMESTAMP
);

-- A session opened for a client of the provider: the client its refresh
-- tokens are bound to, the scopes it was granted and the browser session
-- it came from (NULL for the JSON API's sign-ins).
ALTER TABLE sessions ADD COLUMN client_id TEXT;
ALTER TABLE sessions ADD COLUMN scope TEXT;
ALTER TABLE sessions ADD COLUMN browser_session_id TEXT;
