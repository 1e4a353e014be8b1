DROP TABLE job_annotations;
ALTER TABLE jobs DROP COLUMN annotations;
