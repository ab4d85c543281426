-- ACC-3: the instance's operator accounts (operator, support,
-- security_officer), apart from every tenant's users. A second factor
-- (TOTP, its secret sealed with a key derived from the master key) is
-- confirmed before any other use; sessions are opaque tokens, stored as
-- SHA-256.
CREATE TABLE operators (
    id                     TEXT PRIMARY KEY,
    email                  TEXT NOT NULL UNIQUE,
    role                   TEXT NOT NULL,
    status                 TEXT NOT NULL,
    password_hash          TEXT,
    totp_secret            BLOB,
    totp_last_step         INTEGER NOT NULL DEFAULT 0,
    mfa_confirmed_at       TEXT,
    invitation_hash        TEXT UNIQUE,
    invitation_expires_at  TEXT,
    created_at             TEXT NOT NULL,
    updated_at             TEXT NOT NULL
);
CREATE TABLE operator_sessions (
    id           TEXT PRIMARY KEY,
    operator_id  TEXT NOT NULL REFERENCES operators(id) ON DELETE CASCADE,
    token_hash   TEXT NOT NULL UNIQUE,
    mfa_passed   INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    revoked_at   TEXT
);
