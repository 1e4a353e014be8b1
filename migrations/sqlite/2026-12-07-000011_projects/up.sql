-- Organisations own projects; every job belongs to a project. Keep in step with
-- migrations/postgres (which explains the columns). SQLite refuses a REFERENCES clause on an
-- added column with a non-NULL default, and cannot drop a column that references another
-- table, so jobs.project_id and api_tokens.project_id are checked by the store alone.
CREATE TABLE organisations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE projects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    organisation_id BIGINT NOT NULL REFERENCES organisations (id),
    name TEXT NOT NULL,
    public BOOLEAN NOT NULL,
    weight INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (organisation_id, name)
);

INSERT INTO organisations (id, name, created_at) VALUES (1, 'default', 0);
INSERT INTO projects (id, organisation_id, name, public, weight, created_at)
    VALUES (1, 1, 'default', TRUE, 1, 0);

ALTER TABLE jobs ADD COLUMN project_id BIGINT NOT NULL DEFAULT 1;
CREATE INDEX jobs_project_queue_idx ON jobs (project_id, state, priority DESC, id);

ALTER TABLE api_tokens ADD COLUMN project_id BIGINT;

CREATE TABLE builder_projects (
    builder_id BIGINT NOT NULL REFERENCES builders (id) ON DELETE CASCADE,
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    PRIMARY KEY (builder_id, project_id)
);
CREATE INDEX builder_projects_project_idx ON builder_projects (project_id);
