-- kpiwatch state store, PostgreSQL flavour (mirrors migrations/sqlite). Times are UTC unix seconds (BIGINT).

CREATE TABLE kpis (
    id            TEXT PRIMARY KEY,
    title         TEXT NOT NULL,
    kind          TEXT NOT NULL,
    interval_secs BIGINT NOT NULL,
    source        TEXT NOT NULL,
    origin        TEXT NOT NULL,
    owner         TEXT,
    severity      TEXT NOT NULL,
    fetched_until BIGINT,          -- end of the last successfully fetched window
    last_run_at   BIGINT,
    last_status   TEXT,             -- ok | data_missing | query_error
    last_error    TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE series (
    id              BIGSERIAL PRIMARY KEY,
    kpi_id          TEXT NOT NULL REFERENCES kpis(id),
    dims            TEXT NOT NULL,   -- canonical JSON object of dimension values
    evaluated_until BIGINT,         -- buckets before this were judged by the detector
    UNIQUE (kpi_id, dims)
);

CREATE TABLE observations (
    series_id   BIGINT NOT NULL REFERENCES series(id),
    ts          BIGINT NOT NULL,    -- bucket start
    value       DOUBLE PRECISION NOT NULL,       -- count, gauge value, or numerator
    denominator DOUBLE PRECISION,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (series_id, ts)
);

CREATE TABLE evaluations (
    series_id BIGINT NOT NULL REFERENCES series(id),
    ts        BIGINT NOT NULL,
    value     DOUBLE PRECISION,                  -- in band units (ratio = numerator / denominator)
    expected  DOUBLE PRECISION,                  -- NULL while warming up (no baseline yet)
    lower     DOUBLE PRECISION,
    upper     DOUBLE PRECISION,
    score     DOUBLE PRECISION NOT NULL,
    anomaly   BOOLEAN NOT NULL,
    status    TEXT NOT NULL,
    volume    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (series_id, ts)
);

CREATE TABLE anomalies (
    id          BIGSERIAL PRIMARY KEY,
    series_id   BIGINT NOT NULL REFERENCES series(id),
    ts          BIGINT NOT NULL,
    value       DOUBLE PRECISION NOT NULL,
    expected    DOUBLE PRECISION NOT NULL,
    lower       DOUBLE PRECISION NOT NULL,
    upper       DOUBLE PRECISION NOT NULL,
    score       DOUBLE PRECISION NOT NULL,
    volume      DOUBLE PRECISION NOT NULL,
    seasonality TEXT NOT NULL,
    alerted     BOOLEAN NOT NULL,    -- false for backfilled history outside the alert horizon
    created_at  BIGINT NOT NULL,
    UNIQUE (series_id, ts)
);

CREATE TABLE alerts (
    id              BIGSERIAL PRIMARY KEY,
    kpi_id          TEXT NOT NULL REFERENCES kpis(id),
    series_id       BIGINT REFERENCES series(id), -- NULL for KPI-level alerts (data missing)
    kind            TEXT NOT NULL,    -- anomaly | data_missing
    fingerprint     TEXT NOT NULL,    -- stable: kind + KPI + dimension values
    state           TEXT NOT NULL,    -- pending | firing | resolved | cancelled
    severity        TEXT NOT NULL,
    started_ts      BIGINT NOT NULL, -- first anomalous bucket (or first failed run)
    last_anomaly_ts BIGINT NOT NULL,
    hits_mask       BIGINT NOT NULL DEFAULT 0, -- pending: flagged buckets of the last M, newest = bit 0
    seen            BIGINT NOT NULL DEFAULT 0, -- pending: buckets judged since it opened
    ok_streak       BIGINT NOT NULL DEFAULT 0,
    notified_at     BIGINT,          -- bucket end of the last message (repeat_interval)
    repeats         BIGINT NOT NULL DEFAULT 0,
    resolved_ts     BIGINT,
    acknowledged_by TEXT,
    acknowledged_at BIGINT,
    summary         TEXT NOT NULL DEFAULT '',
    created_at      BIGINT NOT NULL
);
-- At most one open incident per fingerprint.
CREATE UNIQUE INDEX alerts_one_open ON alerts(fingerprint) WHERE state IN ('pending', 'firing');
CREATE INDEX alerts_by_kpi ON alerts(kpi_id, state);

-- The outbox: written in the same transaction as the alert change, delivered by a worker.
CREATE TABLE notifications (
    id         BIGSERIAL PRIMARY KEY,
    alert_id   BIGINT REFERENCES alerts(id), -- NULL for digests
    event      TEXT NOT NULL,        -- firing | repeat-N | escalated-SEVERITY | resolved
    channel    TEXT NOT NULL,        -- email
    recipient  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    status     TEXT NOT NULL,        -- pending | sent
    attempts   BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    sent_at    BIGINT,
    UNIQUE (alert_id, event, channel, recipient)
);
-- One digest per recipient and day (event = 'digest:YYYY-MM-DD'), across restarts and replicas.
CREATE UNIQUE INDEX notifications_one_digest ON notifications(event, recipient) WHERE alert_id IS NULL;
CREATE INDEX notifications_pending ON notifications(status) WHERE status = 'pending';

CREATE TABLE runs (
    id           BIGSERIAL PRIMARY KEY,
    kpi_id       TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    finished_at  BIGINT NOT NULL,
    window_start BIGINT NOT NULL,
    window_end   BIGINT NOT NULL,
    status       TEXT NOT NULL,
    rows         BIGINT NOT NULL,
    error        TEXT
);
CREATE INDEX runs_by_kpi ON runs(kpi_id, started_at);
