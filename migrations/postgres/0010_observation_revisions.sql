-- A per-series revision of the stored observations that a run has already judged: bumped
-- whenever a row before the series' `evaluated_until` is inserted or changes its value or
-- denominator (a restated old bucket). A kept detector or checkpoint records the revision it
-- stepped through; while it is unchanged the run reads only the buckets after the detector's
-- `upto` instead of the whole replayed history (see pipeline.rs, `KeptDetector`).
-- Statement-level triggers with transition tables: one call per statement, however many rows
-- a batch (or a COPY) writes.
ALTER TABLE series ADD COLUMN obs_rev BIGINT NOT NULL DEFAULT 0;

CREATE FUNCTION observations_inserted_rev() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE series s SET obs_rev = s.obs_rev + 1
    FROM (SELECT series_id, min(ts) AS ts FROM new_rows GROUP BY series_id) n
    WHERE s.id = n.series_id AND n.ts < s.evaluated_until;
    RETURN NULL;
END $$;

CREATE TRIGGER observations_inserted_rev AFTER INSERT ON observations
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION observations_inserted_rev();

CREATE FUNCTION observations_restated_rev() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE series s SET obs_rev = s.obs_rev + 1
    FROM (SELECT n.series_id, min(n.ts) AS ts
          FROM new_rows n JOIN old_rows o ON o.series_id = n.series_id AND o.ts = n.ts
          WHERE n.value IS DISTINCT FROM o.value OR n.denominator IS DISTINCT FROM o.denominator
          GROUP BY n.series_id) c
    WHERE s.id = c.series_id AND c.ts < s.evaluated_until;
    RETURN NULL;
END $$;

CREATE TRIGGER observations_restated_rev AFTER UPDATE ON observations
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION observations_restated_rev();
