-- ACC-3: the instance's operator accounts (operator, support,
-- security_officer), apart from every tenant's users. A second factor
-- (TOTP, its secret sealed with a key derived from the master key) is
-- confirmed before any other use; sessions are opaque tokens, stored as
-- SHA-256. Instance rows: no tenant, so no tenant policy.
CREATE TABLE operators (
    id                     uuid PRIMARY KEY,
    email                  TEXT NOT NULL UNIQUE,
    role                   TEXT NOT NULL,
    status                 TEXT NOT NULL,
    password_hash          TEXT,
    totp_secret            BYTEA,
    totp_last_step         BIGINT NOT NULL DEFAULT 0,
    mfa_confirmed_at       timestamptz,
    invitation_hash        TEXT UNIQUE,
    invitation_expires_at  timestamptz,
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL
);
CREATE TABLE operator_sessions (
    id           uuid PRIMARY KEY,
    operator_id  uuid NOT NULL REFERENCES operators(id) ON DELETE CASCADE,
    token_hash   TEXT NOT NULL UNIQUE,
    mfa_passed   INTEGER NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz
);
GRANT SELECT, INSERT, UPDATE, DELETE ON operators, operator_sessions TO strongroom_app;
