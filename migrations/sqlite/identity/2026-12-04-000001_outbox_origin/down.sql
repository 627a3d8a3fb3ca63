ALTER TABLE outbox DROP COLUMN trace_id;
ALTER TABLE outbox DROP COLUMN request_id;
ALTER TABLE outbox DROP COLUMN client_ip;
ALTER TABLE outbox DROP COLUMN actor;
