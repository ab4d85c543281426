-- BAK-4: the journal keeps the whole stored form of what a change left
-- (every row of the entity, by table), so replaying it after a snapshot
-- rebuilds the tenant exactly; NULL where nothing is restored (sessions).
ALTER TABLE journal ADD COLUMN rows TEXT;
-- BAK-4: what must stay erased through any restore (a destroyed key
-- version; later purged tenants and erased data subjects). Instance-level
-- and never part of a tenant's restorable state; shipped to the backup
-- target, re-applied after every restore.
CREATE TABLE erasures (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    shipped_at  TEXT,
    CONSTRAINT erasures_unique UNIQUE (tenant_id, kind, subject)
);
