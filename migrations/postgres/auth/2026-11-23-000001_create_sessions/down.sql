DROP TABLE outbox;
DROP TABLE processed_events;
DROP TABLE refresh_tokens;
DROP TABLE sessions;
DROP TABLE signing_keys;
