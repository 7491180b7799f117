-- Bytes per row of the run log at a 1-minute KPI's 90 days (129,600 runs), same columns and
-- indexes as migrations/postgres/0001_init.sql.
CREATE TEMP TABLE runs_probe (
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
CREATE INDEX runs_probe_by_kpi ON runs_probe(kpi_id, started_at);
INSERT INTO runs_probe (kpi_id, started_at, finished_at, window_start, window_end, status, rows)
SELECT 'payment_success_rate', 1767225600 + i * 60, 1767225600 + i * 60, 1767225600 + i * 60 - 240, 1767225600 + i * 60 - 60, 'ok', 3
FROM generate_series(1, 129600) i;
VACUUM ANALYZE runs_probe;
SELECT count(*) AS rows, pg_total_relation_size('runs_probe') AS bytes,
       pg_total_relation_size('runs_probe') / count(*) AS bytes_per_row FROM runs_probe;
