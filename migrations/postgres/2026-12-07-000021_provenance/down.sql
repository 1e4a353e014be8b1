DROP TABLE statement_signatures;
ALTER TABLE job_attempts DROP COLUMN reproduction_dsse_signature;
ALTER TABLE job_attempts DROP COLUMN reproduction_signature;
ALTER TABLE job_attempts DROP COLUMN reproduction_statement;
ALTER TABLE job_attempts DROP COLUMN dsse_signature;
