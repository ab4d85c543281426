-- Cluster the audit trail by (tenant_id, seq): verification and exports
-- read it in that order, and a rowid table made every row an index probe
-- plus a table seek.
CREATE TABLE audit_events_clustered (
    id           TEXT NOT NULL UNIQUE,
    tenant_id    TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,
    occurred_at  TEXT NOT NULL,
    action       TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    actor_type   TEXT NOT NULL,
    actor_id     TEXT,
    actor_email  TEXT,
    ip           TEXT,
    user_agent   TEXT,
    request_id   TEXT NOT NULL,
    app_version  TEXT NOT NULL,
    target_type  TEXT,
    target_id    TEXT,
    changes      TEXT,
    prev_hash    TEXT,
    hash         TEXT,
    PRIMARY KEY (tenant_id, seq)
) WITHOUT ROWID;
INSERT INTO audit_events_clustered (id, tenant_id, seq, occurred_at, action, outcome, actor_type,
    actor_id, actor_email, ip, user_agent, request_id, app_version, target_type, target_id, changes,
    prev_hash, hash)
SELECT id, tenant_id, seq, occurred_at, action, outcome, actor_type, actor_id, actor_email, ip,
    user_agent, request_id, app_version, target_type, target_id, changes, prev_hash, hash
FROM audit_events;
DROP TABLE audit_events;
ALTER TABLE audit_events_clustered RENAME TO audit_events;
CREATE INDEX audit_events_time ON audit_events(tenant_id, occurred_at);
