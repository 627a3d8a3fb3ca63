-- Mail waiting to be delivered: written with the token it carries, in the
-- same transaction, and deleted once the mail server has taken it. The
-- token is sealed under a key the database does not hold.
CREATE TABLE mail_queue (
    id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    recipient TEXT NOT NULL,
    sealed BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    created_at TIMESTAMP NOT NULL
);

CREATE INDEX mail_queue_due ON mail_queue (due_at);
CREATE INDEX mail_queue_by_user ON mail_queue (user_id, kind);
