ALTER TABLE job_attempts
    DROP COLUMN plan,
    DROP COLUMN statement_signature,
    DROP COLUMN statement;
