-- Detector checkpoints: a series' detector state as of `upto`, so a process that starts or
-- takes a KPI over steps only the buckets after it (see pipeline/checkpoint.rs). Used only
-- when a replay of the stored observations would reach the same state; otherwise ignored.
CREATE TABLE detector_checkpoints (
    series_id  INTEGER PRIMARY KEY REFERENCES series(id),
    upto       INTEGER NOT NULL,  -- bucket end the detector has stepped to
    seen       INTEGER NOT NULL,  -- observations stepped since the replay start
    format     INTEGER NOT NULL,  -- pipeline::CHECKPOINT_FORMAT that wrote it
    state      BLOB NOT NULL,     -- postcard encoding (format, hashes, tail, detector)
    written_at INTEGER NOT NULL   -- wall-clock unix seconds
);
