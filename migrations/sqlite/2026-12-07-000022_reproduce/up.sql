-- Reproducible builds as a job option (issue 19 item 2). Keep in step with migrations/postgres.
-- jobs.reproduce: how many independent builders must build the job with identical artifacts
-- before it is published (1: an ordinary job). jobs.on_mismatch: what a disagreement does:
-- 'fail' publishes nothing, 'publish_first' publishes the first run's artifacts and flags
-- the job. projects.reproduce: the default for the project's jobs that name none.
-- The new terminal state 'unreproducible' joins the CHECK of jobs.state. SQLite cannot alter
-- a CHECK and a rebuild of jobs would cascade deletes into every table that references it,
-- so the constraint's text is widened in place (SQLite's documented procedure for loosening
-- a constraint: every existing row satisfies the wider one); the throwaway table bumps the
-- schema version so other connections reload, and RESET reloads this one's.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
SET sql = replace(sql, '''cancelled'', ''timed_out'')', '''cancelled'', ''timed_out'', ''unreproducible'')')
WHERE type = 'table' AND name = 'jobs';
CREATE TABLE reproduce_schema_bump (x INTEGER);
DROP TABLE reproduce_schema_bump;
PRAGMA writable_schema = RESET;

ALTER TABLE jobs ADD COLUMN reproduce INTEGER NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN on_mismatch TEXT NOT NULL DEFAULT 'fail';
ALTER TABLE projects ADD COLUMN reproduce INTEGER NOT NULL DEFAULT 1;

-- A reproducible job's completed runs, one per successful attempt, written in the
-- completion's transaction: which builder built it (and its independence label as the
-- operator set it: the label's name from `[scheduler] reproduce_independence_label` and the
-- builder's value, NULL when it has none) and the artifacts' digests as a JSON array of
-- {name, size, sha256}, and the fingerprint of the key its completion was verified against
-- (the signer of its reproduction statement). The claim gives the job's next run only to a builder independent of
-- every row here.
CREATE TABLE job_runs (
    job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    run INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    builder_id BIGINT NOT NULL,
    owner_label TEXT NOT NULL,
    owner TEXT,
    signer_fingerprint TEXT,
    artifacts TEXT NOT NULL,
    finished_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, run)
);

-- The verdict of a reproducible job once its last run ended: 'reproduced', 'mismatch'
-- (digests differ) or 'run_failed' (a run failed after an earlier one succeeded), with the
-- evidence as JSON (each run's digests, the diff of the artifacts' file lists and of the
-- text files that differ) and whether the first run was published anyway.
CREATE TABLE job_reproductions (
    job_id BIGINT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    verdict TEXT NOT NULL,
    evidence TEXT NOT NULL,
    published_first BOOLEAN NOT NULL DEFAULT FALSE,
    decided_at BIGINT NOT NULL
);
