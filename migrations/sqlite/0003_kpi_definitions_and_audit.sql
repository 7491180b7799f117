-- KPIs registered through the API (file KPIs live in models/), and the audit log of writes.

CREATE TABLE kpi_definitions (
    id          TEXT PRIMARY KEY,
    model_toml  TEXT NOT NULL,     -- the same fields as models/<id>/model.toml
    query       TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    retired_at  INTEGER            -- retired KPIs keep their history
);

CREATE TABLE audit_log (
    id     INTEGER PRIMARY KEY,
    at     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,          -- e.g. kpi.register, silence.create, alert.ack
    target TEXT NOT NULL,
    detail TEXT NOT NULL           -- JSON
);
CREATE INDEX audit_log_at ON audit_log(at);

-- Feedback on flagged buckets; replayed into the detector (not_anomaly: learn it as normal;
-- new_normal: re-baseline there; confirmed: nothing changes).
CREATE TABLE anomaly_feedback (
    series_id INTEGER NOT NULL REFERENCES series(id),
    ts        INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    comment   TEXT NOT NULL,
    at        INTEGER NOT NULL,
    PRIMARY KEY (series_id, ts)
);
