-- KPIs registered through the API (file KPIs live in models/), and the audit log of writes.

CREATE TABLE kpi_definitions (
    id          TEXT PRIMARY KEY,
    model_toml  TEXT NOT NULL,     -- the same fields as models/<id>/model.toml
    query       TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    retired_at  BIGINT            -- retired KPIs keep their history
);

CREATE TABLE audit_log (
    id     BIGSERIAL PRIMARY KEY,
    at     BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,          -- e.g. kpi.register, silence.create, alert.ack
    target TEXT NOT NULL,
    detail TEXT NOT NULL           -- JSON
);
CREATE INDEX audit_log_at ON audit_log(at);

-- Feedback on flagged buckets; replayed into the detector (not_anomaly: learn it as normal;
-- new_normal: re-baseline there; confirmed: nothing changes).
CREATE TABLE anomaly_feedback (
    series_id BIGINT NOT NULL REFERENCES series(id),
    ts        BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    comment   TEXT NOT NULL,
    at        BIGINT NOT NULL,
    PRIMARY KEY (series_id, ts)
);
