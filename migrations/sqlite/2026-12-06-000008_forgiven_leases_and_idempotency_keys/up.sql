-- A lease lost while the builder was away, forgiven when it came back still holding the
-- attempt: such a network loss does not count against the job's max_attempts.
ALTER TABLE job_attempts ADD COLUMN forgiven_at BIGINT;

-- Idempotency keys of job submissions (`Idempotency-Key` on POST /api/v1/jobs): a client that
-- retries after a timeout gets the job its first request made, never a second one. Kept for a
-- day. Keep in step with migrations/postgres.
CREATE TABLE job_submissions (
    idempotency_key TEXT PRIMARY KEY NOT NULL,
    request_sha256 TEXT NOT NULL,
    job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);
CREATE INDEX job_submissions_created_at ON job_submissions (created_at);
