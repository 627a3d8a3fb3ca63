-- One row: the revision of the policy, moved on by every write.
CREATE TABLE revision (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    value BIGINT NOT NULL
);

INSERT INTO revision (id, value) VALUES (1, 1);

CREATE TABLE roles (
    name TEXT PRIMARY KEY NOT NULL,
    description TEXT NOT NULL,
    builtin BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE role_permissions (
    role TEXT NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    permission TEXT NOT NULL,
    PRIMARY KEY (role, permission)
);

CREATE TABLE user_groups (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE memberships (
    group_id TEXT NOT NULL REFERENCES user_groups (id) ON DELETE CASCADE,
    member_kind TEXT NOT NULL,
    member_id TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (group_id, member_kind, member_id)
);

CREATE INDEX memberships_by_member ON memberships (member_kind, member_id);

CREATE TABLE bindings (
    id TEXT PRIMARY KEY NOT NULL,
    subject_kind TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    role TEXT NOT NULL REFERENCES roles (name),
    scope_kind TEXT NOT NULL,
    scope TEXT NOT NULL,
    expires_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL
);

CREATE INDEX bindings_by_subject ON bindings (subject_kind, subject_id);
CREATE INDEX bindings_by_role ON bindings (role);

CREATE TABLE resource_parents (
    child TEXT PRIMARY KEY NOT NULL,
    parent TEXT NOT NULL
);

CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    subject TEXT NOT NULL,
    payload BLOB NOT NULL,
    occurred_at TIMESTAMP NOT NULL,
    published_at TIMESTAMP
);

CREATE INDEX outbox_pending ON outbox (seq) WHERE published_at IS NULL;

-- The built-in roles: they exist from the first start and are never deleted.
INSERT INTO roles (name, description, builtin, created_at, updated_at) VALUES
    ('admin', 'Every permission, everywhere', TRUE, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP),
    ('user', 'What every registered user may do', TRUE, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP),
    ('auditor', 'Reads the audit log', TRUE, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP);

INSERT INTO role_permissions (role, permission) VALUES
    ('admin', '*'),
    ('auditor', 'audit:read');
