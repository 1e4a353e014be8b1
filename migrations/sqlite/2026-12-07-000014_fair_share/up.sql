-- Fair share (issue 17 item 2): builder time each project used, in one-minute buckets, so
-- the claim can sum a sliding window of it cheaply. Keep in step with migrations/postgres.
-- used_ms: slot time of the attempts that ended in the bucket (assignment to end);
-- attempts: how many ended there, so used_ms / attempts is the project's recent mean.
CREATE TABLE project_usage (
    project_id BIGINT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    bucket_start BIGINT NOT NULL,
    used_ms BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    PRIMARY KEY (project_id, bucket_start)
);
