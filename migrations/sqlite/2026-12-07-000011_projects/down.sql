DROP TABLE builder_projects;
ALTER TABLE api_tokens DROP COLUMN project_id;
DROP INDEX jobs_project_queue_idx;
ALTER TABLE jobs DROP COLUMN project_id;
DROP TABLE projects;
DROP TABLE organisations;
