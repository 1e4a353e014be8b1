-- Job annotations (what a job builds: crate, version, target, commit, branch, ...), written
-- with the job and never changed. Kept twice in the one transaction that inserts the job:
-- as JSON text on the job row, read with the job everywhere (the claim included) like
-- `parameters`; and as one row per key here, whose index answers the listing's
-- `?annotation=key:value` filter (newest first, so job_id last). The index holds the value's
-- SHA-256 (hex) rather than the value: a value may be up to 4 KiB, past what a PostgreSQL
-- B-tree entry can hold. Keep in step with migrations/sqlite.
ALTER TABLE jobs ADD COLUMN annotations TEXT NOT NULL DEFAULT '{}';

CREATE TABLE job_annotations (
    job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    value_sha256 TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
);
CREATE INDEX job_annotations_filter_idx ON job_annotations (key, value_sha256, job_id);
