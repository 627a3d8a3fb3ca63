-- The outbox bus: each published event's place in the service's stream,
-- given out in the order events became visible (see kernel::outbox).
ALTER TABLE outbox ADD COLUMN position INTEGER;
CREATE UNIQUE INDEX outbox_position ON outbox (position);
CREATE INDEX outbox_unpositioned ON outbox (seq) WHERE position IS NULL;

CREATE TABLE outbox_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL
);
INSERT INTO outbox_head (id, position) VALUES (1, 0);

-- How far this service has read other services' streams (see kernel::offsets).
CREATE TABLE consumed (
    consumer TEXT NOT NULL,
    source TEXT NOT NULL,
    partition INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (consumer, source, partition)
);

-- Sessions revoked lately, listed for verifiers that start (ListRevokedSessions).
CREATE INDEX sessions_revoked ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
