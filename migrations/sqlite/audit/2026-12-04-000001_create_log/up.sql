-- One row: the head of the chain, the number and hash of the last entry
-- (0 and the genesis hash while the log is empty). Every append updates it
-- first, which serialises appends.
CREATE TABLE chain_head (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);

INSERT INTO chain_head (id, seq, hash) VALUES
    (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Append-only: each entry's hash covers the previous entry's hash and its
-- own canonical form (see src/audit/model.rs).
CREATE TABLE entries (
    seq BIGINT PRIMARY KEY NOT NULL,
    id TEXT NOT NULL UNIQUE,
    -- The bus event it was made from, none for entries recorded directly;
    -- an event is recorded once.
    event_id TEXT UNIQUE,
    at TIMESTAMP NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    outcome TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    request_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);

CREATE INDEX entries_by_actor ON entries (actor, seq);
CREATE INDEX entries_by_action ON entries (action, seq);
CREATE INDEX entries_by_subject ON entries (subject, seq);
CREATE INDEX entries_by_time ON entries (at);
