-- API tokens gain the read scope (issue 17): a project's token that may see its private jobs
-- but not act on them. Existing rows (admin, submit) stay valid.
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_scope_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_scope_check
    CHECK (scope IN ('admin', 'submit', 'read'));
CREATE INDEX api_tokens_project_idx ON api_tokens (project_id);
