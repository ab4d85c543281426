-- ACC-1: a tenant's own roles, each a named set of permissions (a JSON
-- array of names, per-collection ones included). Users name the roles
-- they hold in users.role, comma-separated.
CREATE TABLE roles (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    permissions  TEXT NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    UNIQUE (tenant_id, name)
);
-- ACC-1: API keys, stored as SHA-256 of their secret; they act with the
-- roles they name, until they expire or are revoked.
CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    secret_hash   TEXT NOT NULL UNIQUE,
    roles         TEXT NOT NULL,
    created_by    TEXT,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys(tenant_id, created_at);
-- When and from where each key was last used: written outside the write
-- path at most once a minute, so it is not part of a key's restorable
-- image (a restore starts it over, as it ends sessions).
CREATE TABLE api_key_uses (
    key_id        uuid PRIMARY KEY REFERENCES api_keys(id) ON DELETE CASCADE,
    tenant_id     uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    last_used_at  timestamptz NOT NULL,
    last_used_ip  TEXT
);
-- TEN-2: the new tables are tenant rows.
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['roles','api_keys','api_key_uses']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON roles, api_keys, api_key_uses TO strongroom_app;
