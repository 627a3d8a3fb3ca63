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
