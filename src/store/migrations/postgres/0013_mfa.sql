-- Second factors (IAM-3): a TOTP secret (or, for a mail factor, the hash
-- of the code that confirms it) sealed with the tenant's data key; the
-- last TOTP step used, so a code works once.
CREATE TABLE mfa_factors (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id       uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind          TEXT NOT NULL,
    key_version   BIGINT NOT NULL,
    sealed        BYTEA NOT NULL,
    last_step     BIGINT NOT NULL DEFAULT 0,
    confirmed_at  timestamptz,
    created_at    timestamptz NOT NULL,
    last_used_at  timestamptz
);
CREATE INDEX mfa_factors_user ON mfa_factors(tenant_id, user_id);
-- Single-use recovery codes, as SHA-256 of 80 random bits each.
CREATE TABLE recovery_codes (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash   TEXT NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL
);
CREATE INDEX recovery_codes_user ON recovery_codes(tenant_id, user_id);
-- The second step of a login: a single-use token (hashed), five minutes,
-- five codes; a mailed code's hash when one was asked for.
CREATE TABLE mfa_challenges (
    id                     uuid PRIMARY KEY,
    tenant_id              uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id                uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash             TEXT NOT NULL UNIQUE,
    device_id              uuid,
    expires_at             timestamptz NOT NULL,
    attempts               INTEGER NOT NULL DEFAULT 0,
    used_at                timestamptz,
    email_code_hash        TEXT,
    email_code_expires_at  timestamptz,
    created_at             timestamptz NOT NULL
);
-- When the session last passed a second factor (step-up).
ALTER TABLE sessions ADD COLUMN mfa_at timestamptz;
-- Whether the user has a confirmed factor, read by the session check.
ALTER TABLE users ADD COLUMN mfa_enrolled INTEGER NOT NULL DEFAULT 0;
-- Who must have a second factor: off, all, or a JSON list of roles.
ALTER TABLE tenant_settings ADD COLUMN mfa_policy TEXT NOT NULL DEFAULT 'off';
-- TEN-2: the new tables are tenant rows.
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['mfa_factors','recovery_codes','mfa_challenges']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON mfa_factors, recovery_codes, mfa_challenges TO strongroom_app;
