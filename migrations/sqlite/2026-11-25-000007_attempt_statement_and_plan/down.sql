ALTER TABLE job_attempts DROP COLUMN plan;
ALTER TABLE job_attempts DROP COLUMN statement_signature;
ALTER TABLE job_attempts DROP COLUMN statement;
