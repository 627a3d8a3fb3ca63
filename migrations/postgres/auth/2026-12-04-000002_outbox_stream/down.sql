DROP INDEX sessions_revoked;
DROP TABLE consumed;
DROP TABLE outbox_head;
DROP INDEX outbox_unpositioned;
DROP INDEX outbox_position;
ALTER TABLE outbox DROP COLUMN position;
