-- Every start of a server (OPS-3): the digests of its executable and of its
-- effective configuration, so that a changed binary or configuration shows.
CREATE TABLE instance_starts (
    id             TEXT PRIMARY KEY,
    started_at     TEXT NOT NULL,
    node           TEXT NOT NULL,
    version        TEXT NOT NULL,
    binary_sha256  TEXT NOT NULL,
    config_sha256  TEXT NOT NULL
);
CREATE INDEX instance_starts_time ON instance_starts(started_at, id);
