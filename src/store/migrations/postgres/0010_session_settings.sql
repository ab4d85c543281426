-- A tenant's own bounds on its users' sessions (IAM-5): minutes without a
-- refresh after which a session ends, and hours after which any session
-- ends; 0 leaves the instance's (no idle bound; session_ttl_hours).
ALTER TABLE tenant_settings ADD COLUMN session_idle_minutes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tenant_settings ADD COLUMN session_max_hours INTEGER NOT NULL DEFAULT 0;
