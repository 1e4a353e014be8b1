-- Organisations own projects; every job belongs to a project. Keep in step with
-- migrations/sqlite.
--
-- The `default` project of the `default` organisation (id 1 for both) holds every job made
-- before projects existed and every job submitted without naming one; it is public (readable
-- without a token), as the whole service was.
--
-- projects.public: readable without a token. weight: its fair share of builder time against
-- the other projects with queued work (docs/fair-share in ARCHITECTURE.md).
CREATE TABLE organisations (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE projects (
    id BIGSERIAL PRIMARY KEY,
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
SELECT setval('organisations_id_seq', 1);
SELECT setval('projects_id_seq', 1);

ALTER TABLE jobs ADD COLUMN project_id BIGINT NOT NULL DEFAULT 1 REFERENCES projects (id);
-- The claim walks one project's queue at a time when several have work (fair share).
CREATE INDEX jobs_project_queue_idx ON jobs (project_id, state, priority DESC, id);

-- A token of one project (NULL: of the whole service, made by the admin).
ALTER TABLE api_tokens ADD COLUMN project_id BIGINT REFERENCES projects (id) ON DELETE CASCADE;

-- A builder with rows here is private to those projects; one without is shared by all.
CREATE TABLE builder_projects (
    builder_id BIGINT NOT NULL REFERENCES builders (id) ON DELETE CASCADE,
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    PRIMARY KEY (builder_id, project_id)
);
CREATE INDEX builder_projects_project_idx ON builder_projects (project_id);
