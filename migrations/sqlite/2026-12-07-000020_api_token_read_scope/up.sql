-- API tokens gain the read scope (issue 17). Keep in step with migrations/postgres. SQLite
-- cannot alter a CHECK constraint, so the table is rebuilt with its rows (nothing references
-- api_tokens).
CREATE TABLE api_tokens_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL CHECK (scope IN ('admin', 'submit', 'read')),
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    project_id BIGINT
);
INSERT INTO api_tokens_new (id, token_hash, scope, description, created_at, expires_at,
                            revoked_at, project_id)
    SELECT id, token_hash, scope, description, created_at, expires_at, revoked_at, project_id
    FROM api_tokens;
DROP TABLE api_tokens;
ALTER TABLE api_tokens_new RENAME TO api_tokens;
CREATE INDEX api_tokens_project_idx ON api_tokens (project_id);
