-- ACC-2, AUD-5: support access to one tenant's data, asked by a support
-- operator and approved by the tenant's admins (consent), or granted by a
-- legal order a security officer records; scoped, time-boxed, revocable.
-- A tenant row: its trail holds every grant and every access under it.
CREATE TABLE support_grants (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    kind             TEXT NOT NULL,
    operator_id      TEXT NOT NULL,
    operator_email   TEXT NOT NULL,
    collections      TEXT NOT NULL,
    access           TEXT NOT NULL,
    files            INTEGER NOT NULL,
    reason           TEXT NOT NULL,
    duration_hours   INTEGER NOT NULL,
    legal_reference  TEXT,
    legal_authority  TEXT,
    recorded_by      TEXT,
    notify           INTEGER NOT NULL DEFAULT 1,
    released_at      timestamptz,
    status           TEXT NOT NULL,
    decided_by       TEXT,
    decided_at       timestamptz,
    expires_at       timestamptz,
    revoked_by       TEXT,
    revoked_at       timestamptz,
    created_at       timestamptz NOT NULL
);
CREATE INDEX support_grants_tenant ON support_grants(tenant_id, created_at);
ALTER TABLE support_grants ENABLE ROW LEVEL SECURITY;
ALTER TABLE support_grants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON support_grants
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON support_grants TO strongroom_app;
