ALTER TABLE outbox DROP COLUMN trace_id, DROP COLUMN request_id, DROP COLUMN client_ip, DROP COLUMN actor;
