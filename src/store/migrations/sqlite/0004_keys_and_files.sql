-- ENC-3: per-tenant data keys, stored only wrapped. `wrapped_by` names the
-- key-encryption key: 'master:<fingerprint>' or 'byok:<fingerprint>'. A
-- destroyed version keeps its number and loses its material.
CREATE TABLE tenant_keys (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'retired', 'destroyed')),
    wrapped     BLOB,
    wrapped_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, version)
);
CREATE UNIQUE INDEX tenant_keys_one_active ON tenant_keys(tenant_id) WHERE state = 'active';

-- BYOK: the tenant's own key, wrapped by the master key so the service
-- survives restarts. Revoking deletes this row.
CREATE TABLE tenant_byok (
    tenant_id    TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    fingerprint  TEXT NOT NULL,
    wrapped      BLOB NOT NULL,
    wrapped_by   TEXT NOT NULL,
    created_at   TEXT NOT NULL
);

-- Rotation progress: re-encryption is driven by what still carries an old
-- version, so it resumes by running again.
CREATE TABLE key_rotations (
    tenant_id    TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    to_version   INTEGER NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('running', 'done')),
    records_done INTEGER NOT NULL DEFAULT 0,
    files_done   INTEGER NOT NULL DEFAULT 0,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    PRIMARY KEY (tenant_id, to_version)
);

-- The oldest key version any encrypted value of the row uses (NULL: none).
ALTER TABLE records ADD COLUMN key_version INTEGER;
CREATE INDEX records_key_version ON records(tenant_id, key_version) WHERE key_version IS NOT NULL;

-- FIL-1: one row per stored file. The object key is generated, never taken
-- from the client; the file key is wrapped by the tenant's data key.
CREATE TABLE files (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    collection_id TEXT NOT NULL,
    record_id     TEXT NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    field         TEXT NOT NULL,
    name          TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    size          INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    stored_size   INTEGER NOT NULL,
    object_key    TEXT NOT NULL,
    key_version   INTEGER NOT NULL,
    wrapped_key   BLOB NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE INDEX files_by_record ON files(tenant_id, record_id);
CREATE INDEX files_key_version ON files(tenant_id, key_version);

-- Objects whose row is gone (file deleted, record or collection deleted);
-- a background sweep deletes them from every store.
CREATE TABLE file_tombstones (
    tenant_id   TEXT NOT NULL,
    object_key  TEXT NOT NULL PRIMARY KEY,
    deleted_at  TEXT NOT NULL
);
CREATE TRIGGER files_tombstone AFTER DELETE ON files
BEGIN
    INSERT OR IGNORE INTO file_tombstones (tenant_id, object_key, deleted_at)
    VALUES (OLD.tenant_id, OLD.object_key, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;
