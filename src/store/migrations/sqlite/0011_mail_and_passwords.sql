-- Mail (mail::outbox): a message is written here in the transaction of
-- the change that sends it, so it goes out if and only if that change
-- committed. Its addressee, subject and bodies are sealed with the
-- tenant's data key (`sealed`, under `key_version`), and dropped once it
-- is sent or given up; what stays says what was sent when, to nobody in
-- particular.
CREATE TABLE mail_outbox (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    template         TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT NOT NULL,
    claimed_at       TEXT,
    last_error       TEXT,
    key_version      INTEGER,
    sealed           BLOB,
    created_at       TEXT NOT NULL,
    sent_at          TEXT
);
CREATE INDEX mail_outbox_due ON mail_outbox(tenant_id, state, next_attempt_at);
-- The language of the tenant's mails (a file in templates/mail/).
ALTER TABLE tenant_settings ADD COLUMN language TEXT NOT NULL DEFAULT 'en';
-- Password resets (IAM-2): a single-use link, stored as its hash.
CREATE TABLE password_resets (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    expires_at  TEXT NOT NULL,
    used_at     TEXT,
    created_at  TEXT NOT NULL
);
CREATE INDEX password_resets_user ON password_resets(tenant_id, user_id);
-- A temporary password set by an administrator's reset must be changed
-- before anything else works.
ALTER TABLE users ADD COLUMN password_change_required INTEGER NOT NULL DEFAULT 0;
