-- Signed checkpoints: the chain's head at some moment, signed with audit's
-- key, so that a tail cut off together with the head that named it is
-- found, and so is a chain made again from some entry on.
CREATE TABLE checkpoints (
    seq BIGINT PRIMARY KEY NOT NULL,
    hash TEXT NOT NULL,
    at TIMESTAMP NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
);
