DROP TABLE job_reproductions;
DROP TABLE job_runs;
ALTER TABLE projects DROP COLUMN reproduce;
ALTER TABLE jobs DROP COLUMN on_mismatch;
ALTER TABLE jobs DROP COLUMN reproduce;
UPDATE jobs SET state = 'failed' WHERE state = 'unreproducible';
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
SET sql = replace(sql, '''cancelled'', ''timed_out'', ''unreproducible'')', '''cancelled'', ''timed_out'')')
WHERE type = 'table' AND name = 'jobs';
CREATE TABLE reproduce_schema_bump (x INTEGER);
DROP TABLE reproduce_schema_bump;
PRAGMA writable_schema = RESET;
