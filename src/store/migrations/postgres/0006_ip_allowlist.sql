-- Tenant IP allow-lists (NET-2): a JSON array of addresses and CIDR blocks
-- a tenant's users may come from; empty, everyone.
ALTER TABLE tenant_settings ADD COLUMN ip_allowlist TEXT NOT NULL DEFAULT '[]';
