-- Why the detector flagged a bucket and on which side: `bucket` (its own value is outside
-- the band), `accumulated` (evidence over recent buckets, each possibly inside the band),
-- `empty_run` or `ongoing` (an incident still under way); `below` or `above`.
ALTER TABLE evaluations ADD COLUMN flagged_by TEXT;
ALTER TABLE anomalies ADD COLUMN flagged_by TEXT;
ALTER TABLE anomalies ADD COLUMN side TEXT;
