DROP TABLE attempt_causes;
DROP INDEX jobs_retry_not_before;
ALTER TABLE jobs DROP COLUMN manual_retries;
ALTER TABLE jobs DROP COLUMN retry_not_before;
ALTER TABLE jobs DROP COLUMN retry_policy;
