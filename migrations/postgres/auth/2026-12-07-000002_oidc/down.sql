ALTER TABLE sessions DROP COLUMN browser_session_id;
ALTER TABLE sessions DROP COLUMN scope;
ALTER TABLE sessions DROP COLUMN client_id;
DROP TABLE browser_sessions;
DROP TABLE oidc_consents;
DROP TABLE oidc_codes;
DROP TABLE oidc_clients;
