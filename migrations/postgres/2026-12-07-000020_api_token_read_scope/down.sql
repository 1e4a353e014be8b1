DROP INDEX api_tokens_project_idx;
DELETE FROM api_tokens WHERE scope = 'read';
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_scope_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_scope_check
    CHECK (scope IN ('admin', 'submit'));
