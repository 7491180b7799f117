-- Observations and verdicts are the store's bulk: a 28-day backfill of a 1-minute KPI writes
-- 40,320 rows to each. Their foreign key to series(id) made PostgreSQL look the series up once
-- per inserted row (RI_FKey_check_ins); measured here, that was about two thirds of a COPY of
-- such a batch (820 ms with the key, 240 ms without, on a loaded machine). The key guarded
-- nothing the code does not: the only `DELETE FROM series` (Store::purge_kpi) deletes the
-- series' evaluations and observations first, in the same transaction, and rows are written
-- only for an id that `Store::series_id` has just returned. Other tables keep their keys.
ALTER TABLE observations DROP CONSTRAINT IF EXISTS observations_series_id_fkey;
ALTER TABLE evaluations DROP CONSTRAINT IF EXISTS evaluations_series_id_fkey;
