-- Several processes on one state store: a lease per KPI run, and claims on outbox rows.
CREATE TABLE leases (
    name   TEXT PRIMARY KEY,   -- e.g. kpi:orders
    holder TEXT NOT NULL,      -- the process holding it
    until  INTEGER NOT NULL    -- wall-clock unix seconds
);
ALTER TABLE notifications ADD COLUMN claimed_by TEXT;
ALTER TABLE notifications ADD COLUMN claim_until INTEGER;
