-- Silences (created through the API) and delivery retries for the notification outbox.

CREATE TABLE silences (
    id         BIGSERIAL PRIMARY KEY,
    matchers   TEXT NOT NULL,      -- JSON object label -> pattern (value, !value, ~regex)
    starts_at  BIGINT NOT NULL,
    ends_at    BIGINT NOT NULL,
    author     TEXT NOT NULL,
    comment    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX silences_active ON silences(ends_at);

-- pending | sent | silenced | failed (gave up: not retryable)
ALTER TABLE notifications ADD COLUMN next_attempt_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE notifications ADD COLUMN suppressed_by TEXT;
-- What HTTP channels render from (JSON); e-mail uses subject and body.
ALTER TABLE notifications ADD COLUMN payload TEXT;

-- Small key/value facts about this installation (e.g. the secret that signs links).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Grouping: messages to one recipient about one group (e.g. one KPI's series) go out as one.
ALTER TABLE notifications ADD COLUMN group_key TEXT NOT NULL DEFAULT '';
CREATE TABLE notification_groups (
    channel      TEXT NOT NULL,
    recipient    TEXT NOT NULL,
    group_key    TEXT NOT NULL,
    last_sent_at BIGINT NOT NULL,
    PRIMARY KEY (channel, recipient, group_key)
);
