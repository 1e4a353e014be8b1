DROP TABLE job_reproductions;
DROP TABLE job_runs;
ALTER TABLE projects DROP COLUMN reproduce;
ALTER TABLE jobs DROP COLUMN on_mismatch;
ALTER TABLE jobs DROP COLUMN reproduce;
