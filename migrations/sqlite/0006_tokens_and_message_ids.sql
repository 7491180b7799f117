-- API tokens managed through the CLI and the API (config tokens stay in the config), and the
-- Message-ID each e-mail went out with, so later messages about an alert thread under it.
CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,        -- viewer | editor | admin
    sha256       TEXT NOT NULL UNIQUE, -- hex SHA-256 of the token; the token itself is never stored
    created_by   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);
CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens(name) WHERE revoked_at IS NULL;
ALTER TABLE notifications ADD COLUMN message_id TEXT;
