DROP TABLE outbox;
DROP TABLE user_tokens;
DROP TABLE users;
