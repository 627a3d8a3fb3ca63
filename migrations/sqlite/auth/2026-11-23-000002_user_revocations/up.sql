-- When all of a user's sessions were last ended: a login that started
-- before then (and so may have checked a password that no longer holds)
-- opens no session.
CREATE TABLE user_revocations (
    user_id TEXT PRIMARY KEY NOT NULL,
    revoked_before TIMESTAMP NOT NULL
);
