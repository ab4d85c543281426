-- Automatic bans (NET-3): one row per client address ever banned; the
-- level says how many bans in a row it has earned (each lasts twice as
-- long as the last). Strikes are counted in memory on SQLite; the table
-- keeps the schema the same as PostgreSQL's.
CREATE TABLE ip_bans (
    ip         TEXT PRIMARY KEY,
    banned_at  TEXT NOT NULL,
    until      TEXT NOT NULL,
    level      INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    lifted_at  TEXT,
    lifted_by  TEXT
);
CREATE TABLE ip_strikes (
    ip            TEXT PRIMARY KEY,
    window_start  TEXT NOT NULL,
    strikes       INTEGER NOT NULL
);
-- Requests nobody was authenticated for are purged by the retention job
-- too (NET-5): by time, without a tenant.
CREATE INDEX access_log_anonymous_time ON access_log(occurred_at) WHERE tenant_id IS NULL;
-- Every audit event names the environment of the instance that wrote it
-- (TEN-3); the chain covers it. Events from before have none.
ALTER TABLE audit_events ADD COLUMN environment TEXT;
