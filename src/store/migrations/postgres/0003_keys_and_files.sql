-- ENC-3: per-tenant data keys, stored only wrapped (see the SQLite twin).
CREATE TABLE tenant_keys (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    version     BIGINT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'retired', 'destroyed')),
    wrapped     BYTEA,
    wrapped_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, version)
);
CREATE UNIQUE INDEX tenant_keys_one_active ON tenant_keys(tenant_id) WHERE state = 'active';

CREATE TABLE tenant_byok (
    tenant_id    TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    fingerprint  TEXT NOT NULL,
    wrapped      BYTEA NOT NULL,
    wrapped_by   TEXT NOT NULL,
    created_at   TEXT NOT NULL
);

CREATE TABLE key_rotations (
    tenant_id    TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    to_version   BIGINT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('running', 'done')),
    records_done BIGINT NOT NULL DEFAULT 0,
    files_done   BIGINT NOT NULL DEFAULT 0,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    PRIMARY KEY (tenant_id, to_version)
);

ALTER TABLE records ADD COLUMN key_version BIGINT;
CREATE INDEX records_key_version ON records(tenant_id, key_version) WHERE key_version IS NOT NULL;

CREATE TABLE files (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    collection_id TEXT NOT NULL,
    record_id     TEXT NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    field         TEXT NOT NULL,
    name          TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    size          BIGINT NOT NULL,
    sha256        TEXT NOT NULL,
    stored_size   BIGINT NOT NULL,
    object_key    TEXT NOT NULL,
    key_version   BIGINT NOT NULL,
    wrapped_key   BYTEA NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE INDEX files_by_record ON files(tenant_id, record_id);
CREATE INDEX files_key_version ON files(tenant_id, key_version);

CREATE TABLE file_tombstones (
    tenant_id   TEXT NOT NULL,
    object_key  TEXT NOT NULL PRIMARY KEY,
    deleted_at  TEXT NOT NULL
);
CREATE FUNCTION files_tombstone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO file_tombstones (tenant_id, object_key, deleted_at)
    VALUES (OLD.tenant_id, OLD.object_key,
            to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
    ON CONFLICT DO NOTHING;
    RETURN OLD;
END
$$;
CREATE TRIGGER files_tombstone AFTER DELETE ON files
    FOR EACH ROW EXECUTE FUNCTION files_tombstone();

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenant_keys','tenant_byok','key_rotations','files','file_tombstones']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = current_setting('app.tenant_id', true))
            WITH CHECK (tenant_id = current_setting('app.tenant_id', true))$p$, t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_keys, tenant_byok, key_rotations, files, file_tombstones TO strongroom_app;
