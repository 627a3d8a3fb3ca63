-- Where each event came from: the request that caused it (see kernel::origin).
ALTER TABLE outbox ADD COLUMN actor TEXT NOT NULL DEFAULT '';
ALTER TABLE outbox ADD COLUMN client_ip TEXT NOT NULL DEFAULT '';
ALTER TABLE outbox ADD COLUMN request_id TEXT NOT NULL DEFAULT '';
ALTER TABLE outbox ADD COLUMN trace_id TEXT NOT NULL DEFAULT '';
