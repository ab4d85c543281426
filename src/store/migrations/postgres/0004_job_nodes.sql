-- Which node ran a scheduled job last, and how many runs it has had: with
-- several app servers each job runs on one node at a time (OPS-1).
ALTER TABLE job_heartbeats ADD COLUMN node TEXT;
ALTER TABLE job_heartbeats ADD COLUMN runs BIGINT NOT NULL DEFAULT 0;
