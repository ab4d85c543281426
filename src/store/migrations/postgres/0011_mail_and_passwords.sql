-- Mail (mail::outbox): a message is written here in the transaction of
-- the change that sends it, so it goes out if and only if that change
-- committed. Its addressee, subject and bodies are sealed with the
-- tenant's data key (`sealed`, under `key_version`), and dropped once it
-- is sent or given up; what stays says what was sent when, to nobody in
-- particular.
CREATE TABLE mail_outbox (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    template         TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    claimed_at       timestamptz,
    last_error       TEXT,
    key_version      BIGINT,
    sealed           BYTEA,
    created_at       timestamptz NOT NULL,
    sent_at          timestamptz
);
CREATE INDEX mail_outbox_due ON mail_outbox(tenant_id, state, next_attempt_at);
-- The language of the tenant's mails (a file in templates/mail/).
ALTER TABLE tenant_settings ADD COLUMN language TEXT NOT NULL DEFAULT 'en';
-- Password resets (IAM-2): a single-use link, stored as its hash.
CREATE TABLE password_resets (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL
);
CREATE INDEX password_resets_user ON password_resets(tenant_id, user_id);
-- A temporary password set by an administrator's reset must be changed
-- before anything else works.
ALTER TABLE users ADD COLUMN password_change_required INTEGER NOT NULL DEFAULT 0;
-- TEN-2: both new tables are tenant rows.
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['mail_outbox','password_resets']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format($p$CREATE POLICY tenant_isolation ON %I
            USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
            WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON mail_outbox, password_resets TO strongroom_app;
