DROP TABLE job_submissions;
ALTER TABLE job_attempts DROP COLUMN forgiven_at;
