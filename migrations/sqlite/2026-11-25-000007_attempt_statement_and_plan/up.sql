-- What a verified completion leaves on its attempt: the signed build statement (kept for every
-- outcome, so a job without artifacts, e.g. in plan mode, still has one to verify) and the
-- plan output of a plan-mode attempt (at most 64 KiB, checked before it is stored).
-- Keep in step with migrations/postgres.
ALTER TABLE job_attempts ADD COLUMN statement TEXT;
ALTER TABLE job_attempts ADD COLUMN statement_signature TEXT;
ALTER TABLE job_attempts ADD COLUMN plan TEXT;
