-- ACC-1: a tenant's own roles, each a named set of permissions (a JSON
-- array of names, per-collection ones included). Users name the roles
-- they hold in users.role, comma-separated.
CREATE TABLE roles (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    permissions  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);
-- ACC-1: API keys, stored as SHA-256 of their secret; they act with the
-- roles they name, until they expire or are revoked.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    secret_hash   TEXT NOT NULL UNIQUE,
    roles         TEXT NOT NULL,
    created_by    TEXT,
    created_at    TEXT NOT NULL,
    expires_at    TEXT,
    revoked_at    TEXT
);
CREATE INDEX api_keys_tenant ON api_keys(tenant_id, created_at);
-- When and from where each key was last used: written outside the write
-- path at most once a minute, so it is not part of a key's restorable
-- image (a restore starts it over, as it ends sessions).
CREATE TABLE api_key_uses (
    key_id        TEXT PRIMARY KEY REFERENCES api_keys(id) ON DELETE CASCADE,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    last_used_at  TEXT NOT NULL,
    last_used_ip  TEXT
);
