-- BAK-4: the journal keeps the whole stored form of what a change left
-- (every row of the entity, by table), so replaying it after a snapshot
-- rebuilds the tenant exactly; NULL where nothing is restored (sessions).
ALTER TABLE journal ADD COLUMN rows TEXT;
-- BAK-4: what must stay erased through any restore (a destroyed key
-- version; later purged tenants and erased data subjects). Instance-level
-- and never part of a tenant's restorable state; shipped to the backup
-- target, re-applied after every restore.
CREATE TABLE erasures (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    kind        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    recorded_at timestamptz NOT NULL,
    shipped_at  timestamptz,
    CONSTRAINT erasures_unique UNIQUE (tenant_id, kind, subject)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON erasures TO strongroom_app;
ALTER TABLE erasures ENABLE ROW LEVEL SECURITY;
ALTER TABLE erasures FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON erasures
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
