-- Automatic retry by failure kind (issue 17 item 4). Keep in step with migrations/postgres.
-- retry_policy: the submission's `retry` as JSON; NULL is the policy of every job before it
-- (retry lost builders only), so old jobs behave as they did.
-- retry_not_before: set while a retried job waits out its back-off; the claim skips a job
-- that has it, and the scheduler's sweep clears it once the time has come.
-- manual_retries: retries asked for through the API, counted apart from automatic attempts.
ALTER TABLE jobs ADD COLUMN retry_policy TEXT;
ALTER TABLE jobs ADD COLUMN retry_not_before BIGINT;
ALTER TABLE jobs ADD COLUMN manual_retries INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_retry_not_before ON jobs (retry_not_before) WHERE retry_not_before IS NOT NULL;

-- Why an attempt was started, written when the job is put back in the queue for it (the
-- attempt row itself appears only at the claim). No row: the job's first attempt.
CREATE TABLE attempt_causes (
    job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    cause TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt)
);

-- Attempts started before this migration: told apart by how the attempt before them ended.
-- Before automatic retries existed, only an operator put a failed job back.
INSERT INTO attempt_causes (job_id, attempt, cause)
SELECT job_id, attempt + 1,
       CASE
           WHEN outcome = 'rejected' THEN 'reassigned'
           WHEN outcome = 'lost' AND started_at IS NULL THEN 'reassigned'
           WHEN outcome = 'lost' THEN 'retry_after_lost_builder'
           ELSE 'manual_retry'
       END
FROM job_attempts
WHERE outcome IS NOT NULL AND outcome <> 'succeeded';
