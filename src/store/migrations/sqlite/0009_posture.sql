-- The posture job's signed reports (POS-1): the whole instance's verdicts
-- and evidence, kept so that `GET /api/v1/ops/posture` shows the last one
-- with its age, and the history shows when a control changed.
CREATE TABLE posture_reports (
    id        TEXT PRIMARY KEY,
    taken_at  TEXT NOT NULL,
    node      TEXT NOT NULL,
    failing   INTEGER NOT NULL,
    document  TEXT NOT NULL
);
CREATE INDEX posture_reports_time ON posture_reports(taken_at, id);
