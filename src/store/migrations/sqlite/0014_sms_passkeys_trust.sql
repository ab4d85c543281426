-- IAM-3, the remaining factors. What a factor shows of itself (an SMS
-- number's last three digits, a passkey's name) and, for a passkey, the
-- credential id by which a login finds it.
ALTER TABLE mfa_factors ADD COLUMN label TEXT;
ALTER TABLE mfa_factors ADD COLUMN credential_id TEXT;
CREATE UNIQUE INDEX mfa_factors_credential ON mfa_factors(tenant_id, credential_id)
    WHERE credential_id IS NOT NULL;
-- How a login's one-time code went out: email or sms.
ALTER TABLE mfa_challenges ADD COLUMN code_channel TEXT;
-- A login with a passkey and no password: its single-use challenge.
CREATE TABLE passkey_challenges (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    token_hash      TEXT NOT NULL UNIQUE,
    expires_at      TEXT NOT NULL,
    used_at         TEXT,
    created_at      TEXT NOT NULL
);
-- Trusted devices: for how many days a tenant lets a device that passed a
-- second factor skip it (0: never), and until when each device is trusted.
ALTER TABLE tenant_settings ADD COLUMN mfa_trust_days INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN mfa_trusted_until TEXT;
