-- Tamper evidence (AUD-7), retention (AUD-3) and the access log (AUD-2).

-- Each event carries the hash of its predecessor and its own:
-- hash = SHA-256(prev_hash || canonical(event)).
ALTER TABLE audit_events ADD COLUMN prev_hash TEXT;
ALTER TABLE audit_events ADD COLUMN hash TEXT;
CREATE INDEX audit_events_time ON audit_events(tenant_id, occurred_at);

-- The chain head, and the anchor left behind by retention: the seq and hash
-- of the newest deleted event, from which the retained chain continues.
ALTER TABLE tenant_sequences ADD COLUMN audit_head TEXT;
ALTER TABLE tenant_sequences ADD COLUMN audit_anchor_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tenant_sequences ADD COLUMN audit_anchor_hash TEXT;

-- Signed checkpoints: Ed25519 over (tenant, seq, hash, signed_at).
CREATE TABLE audit_checkpoints (
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    hash        TEXT NOT NULL,
    signed_at   TEXT NOT NULL,
    signature   TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

CREATE TABLE tenant_settings (
    tenant_id             TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    audit_retention_days  INTEGER NOT NULL DEFAULT 365,
    updated_at            TEXT NOT NULL
);

-- Every HTTP request. tenant_id is NULL for requests that never named a
-- tenant (health checks, unknown routes, unknown tenants at login).
CREATE TABLE access_log (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT REFERENCES tenants(id) ON DELETE CASCADE,
    occurred_at  TEXT NOT NULL,
    actor_type   TEXT NOT NULL,
    actor_id     TEXT,
    actor_email  TEXT,
    method       TEXT NOT NULL,
    route        TEXT,
    path         TEXT NOT NULL,
    activity     TEXT NOT NULL,
    status       INTEGER NOT NULL,
    latency_us   INTEGER NOT NULL,
    ip           TEXT,
    user_agent   TEXT,
    request_id   TEXT NOT NULL,
    app_version  TEXT NOT NULL
);
CREATE INDEX access_log_time ON access_log(tenant_id, occurred_at, id);

-- Heartbeats of scheduled jobs (OPS-1 first cut).
CREATE TABLE job_heartbeats (
    job          TEXT PRIMARY KEY,
    last_run_at  TEXT NOT NULL,
    last_ok      INTEGER NOT NULL,
    detail       TEXT
);

-- Existing tenants: default settings; events written before this migration
-- carry no hashes, so the verified chain starts after them.
INSERT INTO tenant_settings (tenant_id, updated_at) SELECT id, created_at FROM tenants;
UPDATE tenant_sequences SET audit_anchor_seq = audit_seq;
