-- A per-series revision of the stored observations that a run has already judged: bumped
-- whenever a row before the series' `evaluated_until` is inserted or changes its value or
-- denominator (a restated old bucket). A kept detector or checkpoint records the revision it
-- stepped through; while it is unchanged the run reads only the buckets after the detector's
-- `upto` instead of the whole replayed history (see pipeline.rs, `KeptDetector`).
ALTER TABLE series ADD COLUMN obs_rev INTEGER NOT NULL DEFAULT 0;

CREATE TRIGGER observations_inserted_rev AFTER INSERT ON observations
WHEN NEW.ts < (SELECT evaluated_until FROM series WHERE id = NEW.series_id)
BEGIN
    UPDATE series SET obs_rev = obs_rev + 1 WHERE id = NEW.series_id;
END;

CREATE TRIGGER observations_restated_rev AFTER UPDATE OF value, denominator ON observations
WHEN (OLD.value IS NOT NEW.value OR OLD.denominator IS NOT NEW.denominator)
  AND NEW.ts < (SELECT evaluated_until FROM series WHERE id = NEW.series_id)
BEGIN
    UPDATE series SET obs_rev = obs_rev + 1 WHERE id = NEW.series_id;
END;
