-- The timezone a KPI's buckets are aligned to: its timezone for intervals of an hour or more
-- (local midnights for `1d`), NULL for UTC epoch multiples (sub-hour intervals, UTC KPIs,
-- and every KPI stored before this migration). A change means the stored buckets no longer
-- line up and they are dropped, like a change of interval.
ALTER TABLE kpis ADD COLUMN bucket_tz TEXT;
