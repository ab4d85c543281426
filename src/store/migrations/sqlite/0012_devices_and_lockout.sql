-- Failed logins (IAM-6), shared by every app server: one row per account
-- as typed (a SHA-256 of the tenant slug and the e-mail address, so an
-- account that does not exist is counted like one that does, and no
-- address is kept) or per known device. Instance rows: no tenant owns a
-- guess at an account that may not exist.
CREATE TABLE login_failures (
    key              TEXT PRIMARY KEY,
    failures         INTEGER NOT NULL,
    last_failure_at  TEXT NOT NULL,
    locked_until     TEXT
);
-- The devices users log in from (IAM-7): a long-lived token stored as its
-- hash, what it looked like, and for an announced one the hash of the
-- "this wasn't me" link of its mail.
CREATE TABLE devices (
    id                 TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id            TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash         TEXT NOT NULL UNIQUE,
    user_agent         TEXT,
    ip_prefix          TEXT,
    first_seen_at      TEXT NOT NULL,
    last_seen_at       TEXT NOT NULL,
    not_me_hash        TEXT UNIQUE,
    not_me_expires_at  TEXT
);
CREATE INDEX devices_user ON devices(tenant_id, user_id);
