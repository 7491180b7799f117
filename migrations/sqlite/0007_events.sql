-- Events and holidays (issue 14): buckets inside one are neither learned nor alerted. Local
-- start/end in a timezone (yearly ones recur on the same local date), margins in seconds,
-- the KPIs it applies to (JSON array of ids) or the labels they must carry (JSON object).
-- origin: config (synced from [[calendar]] at start), api, ical (imported through the API).
CREATE TABLE events (
    id                 INTEGER PRIMARY KEY,
    name               TEXT NOT NULL,
    origin             TEXT NOT NULL,
    starts_local       TEXT NOT NULL,    -- YYYY-MM-DDTHH:MM:SS
    ends_local         TEXT NOT NULL,    -- exclusive
    timezone           TEXT NOT NULL,
    yearly             BOOLEAN NOT NULL,
    margin_before_secs INTEGER NOT NULL,
    margin_after_secs  INTEGER NOT NULL,
    kpis               TEXT NOT NULL,
    labels             TEXT NOT NULL,
    uid                TEXT,             -- iCalendar UID, when imported
    created_by         TEXT NOT NULL,
    created_at         INTEGER NOT NULL
);
CREATE INDEX events_origin ON events(origin);
