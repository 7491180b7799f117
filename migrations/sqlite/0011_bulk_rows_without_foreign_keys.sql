-- PostgreSQL's 0010 drops the foreign keys of observations and evaluations to series(id) (a
-- bulk-write cost there). SQLite can drop a constraint only by rebuilding the table, and its
-- per-row check is cheap, so here the keys stay; this migration keeps the numbering in step.
SELECT 1;
