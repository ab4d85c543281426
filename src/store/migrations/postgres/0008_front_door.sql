-- Automatic bans (NET-3), shared by every app server on the database: one
-- row per client address ever banned; the level says how many bans in a
-- row it has earned (each lasts twice as long as the last). Strikes are
-- counted here too, so that strikes spread over nodes add up.
CREATE TABLE ip_bans (
    ip         TEXT PRIMARY KEY,
    banned_at  timestamptz NOT NULL,
    until      timestamptz NOT NULL,
    level      INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    lifted_at  timestamptz,
    lifted_by  TEXT
);
CREATE TABLE ip_strikes (
    ip            TEXT PRIMARY KEY,
    window_start  timestamptz NOT NULL,
    strikes       INTEGER NOT NULL
);
GRANT SELECT, INSERT, UPDATE, DELETE ON ip_bans, ip_strikes TO strongroom_app;
-- Requests nobody was authenticated for belong to no tenant: visible, and
-- purged by the retention job (NET-5), only outside every tenant's scope.
CREATE POLICY anonymous_rows ON access_log
    USING (tenant_id IS NULL AND NULLIF(current_setting('app.tenant_id', true), '') IS NULL);
CREATE INDEX access_log_anonymous_time ON access_log(occurred_at) WHERE tenant_id IS NULL;
-- Every audit event names the environment of the instance that wrote it
-- (TEN-3); the chain covers it. Events from before have none.
ALTER TABLE audit_events ADD COLUMN environment TEXT;
-- Password-attempt buckets (NET-3), shared by every app server: the key is
-- a hash of what is counted (an account or an address), tokens are what is
-- left, at is when they were counted (Unix seconds).
CREATE TABLE rate_buckets (
    key     TEXT PRIMARY KEY,
    tokens  DOUBLE PRECISION NOT NULL,
    at      DOUBLE PRECISION NOT NULL
);
CREATE INDEX rate_buckets_at ON rate_buckets(at);
GRANT SELECT, INSERT, UPDATE, DELETE ON rate_buckets TO strongroom_app;
