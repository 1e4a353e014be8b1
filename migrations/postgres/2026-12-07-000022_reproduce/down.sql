DROP TABLE job_reproductions;
DROP TABLE job_runs;
ALTER TABLE projects DROP COLUMN reproduce;
ALTER TABLE jobs DROP COLUMN on_mismatch;
ALTER TABLE jobs DROP COLUMN reproduce;
UPDATE jobs SET state = 'failed' WHERE state = 'unreproducible';
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('queued', 'assigned', 'running', 'succeeded', 'failed', 'cancelled',
                     'timed_out'));
