-- Failed logins (IAM-6), shared by every app server: one row per account
-- as typed (a SHA-256 of the tenant slug and the e-mail address, so an
-- account that does not exist is counted like one that does, and no
-- address is kept) or per known device. Instance rows: no tenant owns a
-- guess at an account that may not exist.
CREATE TABLE login_failures (
    key              TEXT PRIMARY KEY,
    failures         INTEGER NOT NULL,
    last_failure_at  timestamptz NOT NULL,
    locked_until     timestamptz
);
GRANT SELECT, INSERT, UPDATE, DELETE ON login_failures TO strongroom_app;
-- The devices users log in from (IAM-7): a long-lived token stored as its
-- hash, what it looked like, and for an announced one the hash of the
-- "this wasn't me" link of its mail.
CREATE TABLE devices (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id            uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash         TEXT NOT NULL UNIQUE,
    user_agent         TEXT,
    ip_prefix          TEXT,
    first_seen_at      timestamptz NOT NULL,
    last_seen_at       timestamptz NOT NULL,
    not_me_hash        TEXT UNIQUE,
    not_me_expires_at  timestamptz
);
CREATE INDEX devices_user ON devices(tenant_id, user_id);
ALTER TABLE devices ENABLE ROW LEVEL SECURITY;
ALTER TABLE devices FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON devices
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON devices TO strongroom_app;
