CREATE TABLE api_tokens_old (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL CHECK (scope IN ('admin', 'submit')),
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    project_id BIGINT
);
INSERT INTO api_tokens_old (id, token_hash, scope, description, created_at, expires_at,
                            revoked_at, project_id)
    SELECT id, token_hash, scope, description, created_at, expires_at, revoked_at, project_id
    FROM api_tokens WHERE scope <> 'read';
DROP TABLE api_tokens;
ALTER TABLE api_tokens_old RENAME TO api_tokens;
