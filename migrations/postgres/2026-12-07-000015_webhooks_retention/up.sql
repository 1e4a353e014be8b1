-- Notifications and retention (issue 17 items 5 and 6). Keep in step with migrations/sqlite.

-- A project's webhook: job state changes of the chosen `events` (comma-separated: queued,
-- started, finished) are POSTed to `url`, signed with `secret` (HMAC-SHA256; kept in clear
-- because signing needs it).
CREATE TABLE webhooks (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    events TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX webhooks_project_idx ON webhooks (project_id);

-- One event to send to one webhook. The body is fixed when the row is written, so every
-- retry sends (and signs) the same bytes. `next_attempt_at` is NULL once delivered or given
-- up; the notifier sends rows whose time has come, so pending ones survive a restart.
CREATE TABLE webhook_deliveries (
    id BIGSERIAL PRIMARY KEY,
    webhook_id BIGINT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    job_id BIGINT NOT NULL,
    job_attempt INTEGER NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at BIGINT,
    last_status INTEGER,
    last_error TEXT,
    delivered_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at);
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, id);
CREATE INDEX webhook_deliveries_job_idx ON webhook_deliveries (job_id, webhook_id, event, job_attempt);

-- Each try of a delivery: the answer's status, or why there was none.
CREATE TABLE webhook_delivery_attempts (
    delivery_id BIGINT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    at BIGINT NOT NULL,
    status INTEGER,
    error TEXT,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- A project's retention; no row (or NULL limits) keeps everything. A finished job's
-- artifacts (logs) are deleted once it is older than the max age or not among the project's
-- newest `keep_last` finished jobs.
CREATE TABLE project_retention (
    project_id BIGINT PRIMARY KEY REFERENCES projects (id) ON DELETE CASCADE,
    artifacts_max_age_days INTEGER,
    artifacts_keep_last INTEGER,
    logs_max_age_days INTEGER,
    logs_keep_last INTEGER,
    updated_at BIGINT NOT NULL
);

-- When a job's artifacts (logs) were deleted, by retention or by an admin, so the job says
-- so instead of looking as if it produced none.
CREATE TABLE job_expirations (
    job_id BIGINT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    artifacts_expired_at BIGINT,
    logs_expired_at BIGINT
);
