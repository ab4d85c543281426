-- The application runs its queries as strongroom_app (SET ROLE on every
-- pooled connection), which is neither owner nor superuser, so the row-level
-- security policies below hold even when the database URL names a superuser.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'strongroom_app') THEN
        CREATE ROLE strongroom_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL; -- another database of this cluster created it concurrently
END
$$;

-- The connecting user must be allowed to SET ROLE strongroom_app.
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'strongroom_app', 'MEMBER') THEN
        EXECUTE format('GRANT strongroom_app TO %I', current_user);
    END IF;
END
$$;

-- Strongroom schema, PostgreSQL. Every tenant-owned table carries tenant_id with
-- a foreign key to tenants (TEN-1). Ids are UUID text, times are RFC 3339 UTC
-- text with microseconds (so text order is time order).

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'active',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- Gap-free per-tenant counters for the journal and the audit trail.
CREATE TABLE tenant_sequences (
    tenant_id    TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    journal_seq  BIGINT NOT NULL DEFAULT 0,
    audit_seq    BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    email          TEXT NOT NULL,
    role           TEXT NOT NULL,
    status         TEXT NOT NULL,
    password_hash  TEXT,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    CONSTRAINT users_email_unique UNIQUE (tenant_id, email)
);

CREATE TABLE invitations (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    expires_at  TEXT NOT NULL,
    used_at     TEXT,
    created_at  TEXT NOT NULL
);
CREATE INDEX invitations_user ON invitations(tenant_id, user_id);

CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    revoked_at    TEXT,
    revoked_reason TEXT,
    ip            TEXT,
    user_agent    TEXT
);
CREATE INDEX sessions_user ON sessions(tenant_id, user_id);

CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL,
    used_at     TEXT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens(session_id);

CREATE TABLE collections (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    fields      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    CONSTRAINT collections_name_unique UNIQUE (tenant_id, name)
);

CREATE TABLE records (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    collection_id  TEXT NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    data           JSONB NOT NULL,
    version        BIGINT NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE INDEX records_listing ON records(tenant_id, collection_id, created_at, id);

-- Values of `unique` and `indexed` fields, kept in step with records by the
-- write path. unique_value is NULL for merely indexed fields, so the unique
-- constraint only bites on unique ones.
CREATE TABLE record_keys (
    tenant_id      TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    collection_id  TEXT NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    record_id      TEXT NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    field          TEXT NOT NULL,
    value          TEXT NOT NULL,
    unique_value   TEXT,
    CONSTRAINT record_keys_unique UNIQUE (collection_id, field, unique_value)
);
CREATE INDEX record_keys_lookup ON record_keys(collection_id, field, value);
CREATE INDEX record_keys_record ON record_keys(record_id);

-- The journal: after-image of every change, per-tenant gap-free sequence.
-- Backups ship it (DESIGN.md invariant 3).
CREATE TABLE journal (
    tenant_id    TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    seq          BIGINT NOT NULL,
    occurred_at  TEXT NOT NULL,
    entity       TEXT NOT NULL,
    entity_id    TEXT NOT NULL,
    op           TEXT NOT NULL,
    after        TEXT,
    app_version  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

CREATE TABLE audit_events (
    id           TEXT NOT NULL UNIQUE,
    tenant_id    TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    seq          BIGINT NOT NULL,
    occurred_at  TEXT NOT NULL,
    action       TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    actor_type   TEXT NOT NULL,
    actor_id     TEXT,
    actor_email  TEXT,
    ip           TEXT,
    user_agent   TEXT,
    request_id   TEXT NOT NULL,
    app_version  TEXT NOT NULL,
    target_type  TEXT,
    target_id    TEXT,
    changes      TEXT,
    PRIMARY KEY (tenant_id, seq)
);

-- TEN-2: isolation in depth. A query that forgets `WHERE tenant_id = …`
-- still sees only the tenant named in app.tenant_id, which the store sets
-- per transaction (set_config(..., true)). Unset means no rows at all.
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenant_sequences','users','invitations','sessions',
        'refresh_tokens','collections','records','record_keys','journal','audit_events']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = current_setting('app.tenant_id', true))
            WITH CHECK (tenant_id = current_setting('app.tenant_id', true))$p$, t);
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA public TO strongroom_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO strongroom_app;
