-- kpiwatch state store, SQLite flavour. Times are UTC unix seconds (INTEGER).

CREATE TABLE kpis (
    id            TEXT PRIMARY KEY,
    title         TEXT NOT NULL,
    kind          TEXT NOT NULL,
    interval_secs INTEGER NOT NULL,
    source        TEXT NOT NULL,
    origin        TEXT NOT NULL,
    owner         TEXT,
    severity      TEXT NOT NULL,
    fetched_until INTEGER,          -- end of the last successfully fetched window
    last_run_at   INTEGER,
    last_status   TEXT,             -- ok | data_missing | query_error
    last_error    TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE series (
    id              INTEGER PRIMARY KEY,
    kpi_id          TEXT NOT NULL REFERENCES kpis(id),
    dims            TEXT NOT NULL,   -- canonical JSON object of dimension values
    evaluated_until INTEGER,         -- buckets before this were judged by the detector
    UNIQUE (kpi_id, dims)
);

CREATE TABLE observations (
    series_id   INTEGER NOT NULL REFERENCES series(id),
    ts          INTEGER NOT NULL,    -- bucket start
    value       REAL NOT NULL,       -- count, gauge value, or numerator
    denominator REAL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (series_id, ts)
) WITHOUT ROWID;

CREATE TABLE evaluations (
    series_id INTEGER NOT NULL REFERENCES series(id),
    ts        INTEGER NOT NULL,
    value     REAL,                  -- in band units (ratio = numerator / denominator)
    expected  REAL,                  -- NULL while warming up (no baseline yet)
    lower     REAL,
    upper     REAL,
    score     REAL NOT NULL,
    anomaly   INTEGER NOT NULL,
    status    TEXT NOT NULL,
    volume    REAL NOT NULL,
    PRIMARY KEY (series_id, ts)
) WITHOUT ROWID;

CREATE TABLE anomalies (
    id          INTEGER PRIMARY KEY,
    series_id   INTEGER NOT NULL REFERENCES series(id),
    ts          INTEGER NOT NULL,
    value       REAL NOT NULL,
    expected    REAL NOT NULL,
    lower       REAL NOT NULL,
    upper       REAL NOT NULL,
    score       REAL NOT NULL,
    volume      REAL NOT NULL,
    seasonality TEXT NOT NULL,
    alerted     INTEGER NOT NULL,    -- 0 for backfilled history outside the alert horizon
    created_at  INTEGER NOT NULL,
    UNIQUE (series_id, ts)
);

CREATE TABLE alerts (
    id              INTEGER PRIMARY KEY,
    kpi_id          TEXT NOT NULL REFERENCES kpis(id),
    series_id       INTEGER REFERENCES series(id), -- NULL for KPI-level alerts (data missing)
    kind            TEXT NOT NULL,    -- anomaly | data_missing
    fingerprint     TEXT NOT NULL,    -- stable: kind + KPI + dimension values
    state           TEXT NOT NULL,    -- pending | firing | resolved | cancelled
    severity        TEXT NOT NULL,
    started_ts      INTEGER NOT NULL, -- first anomalous bucket (or first failed run)
    last_anomaly_ts INTEGER NOT NULL,
    hits_mask       INTEGER NOT NULL DEFAULT 0, -- pending: flagged buckets of the last M, newest = bit 0
    seen            INTEGER NOT NULL DEFAULT 0, -- pending: buckets judged since it opened
    ok_streak       INTEGER NOT NULL DEFAULT 0,
    notified_at     INTEGER,          -- bucket end of the last message (repeat_interval)
    repeats         INTEGER NOT NULL DEFAULT 0,
    resolved_ts     INTEGER,
    acknowledged_by TEXT,
    acknowledged_at INTEGER,
    summary         TEXT NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL
);
-- At most one open incident per fingerprint.
CREATE UNIQUE INDEX alerts_one_open ON alerts(fingerprint) WHERE state IN ('pending', 'firing');
CREATE INDEX alerts_by_kpi ON alerts(kpi_id, state);

-- The outbox: written in the same transaction as the alert change, delivered by a worker.
CREATE TABLE notifications (
    id         INTEGER PRIMARY KEY,
    alert_id   INTEGER REFERENCES alerts(id), -- NULL for digests
    event      TEXT NOT NULL,        -- firing | repeat-N | escalated-SEVERITY | resolved
    channel    TEXT NOT NULL,        -- email
    recipient  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    status     TEXT NOT NULL,        -- pending | sent
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    sent_at    INTEGER,
    UNIQUE (alert_id, event, channel, recipient)
);
-- One digest per recipient and day (event = 'digest:YYYY-MM-DD'), across restarts and replicas.
CREATE UNIQUE INDEX notifications_one_digest ON notifications(event, recipient) WHERE alert_id IS NULL;
CREATE INDEX notifications_pending ON notifications(status) WHERE status = 'pending';

CREATE TABLE runs (
    id           INTEGER PRIMARY KEY,
    kpi_id       TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER NOT NULL,
    window_start INTEGER NOT NULL,
    window_end   INTEGER NOT NULL,
    status       TEXT NOT NULL,
    rows         INTEGER NOT NULL,
    error        TEXT
);
CREATE INDEX runs_by_kpi ON runs(kpi_id, started_at);
