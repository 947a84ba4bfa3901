-- Dashboard sessions. A session stands for the API key it was opened with (by the key's hash,
-- so revoking the key ends it); its cookie is stored hashed, and its CSRF token goes in every
-- form it serves.
CREATE TABLE web_sessions (
    id_hash TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX web_sessions_expiry ON web_sessions (expires_at_ms);
