-- Buildfleet initial schema (SQLite). Keep in step with migrations/postgres: same tables,
-- same columns, same names. Timestamps are unix milliseconds (BIGINT) on both backends;
-- JSON values are TEXT so one Diesel schema fits both.

-- AUTOINCREMENT: ids are never reused, even after the newest row is deleted.
CREATE TABLE builders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    public_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    enabled BOOLEAN NOT NULL DEFAULT 1,
    labels TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT
);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source_url TEXT NOT NULL,
    source_sha256 TEXT NOT NULL,
    source_max_bytes BIGINT NOT NULL CHECK (source_max_bytes > 0),
    recipe TEXT NOT NULL,
    parameters TEXT NOT NULL DEFAULT '{}',
    required_labels TEXT NOT NULL DEFAULT '{}',
    mode TEXT NOT NULL CHECK (mode IN ('build', 'plan')),
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL
        CHECK (state IN ('queued', 'assigned', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    attempt INTEGER NOT NULL CHECK (attempt >= 1),
    max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    timeout_secs BIGINT NOT NULL CHECK (timeout_secs > 0),
    submitter TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    cancel_requested_at BIGINT,
    error TEXT,
    -- Builder of the current (or, once finished, the last) attempt.
    builder_id BIGINT REFERENCES builders (id) ON DELETE SET NULL
);

-- The claim: queued jobs by priority, then age.
CREATE INDEX jobs_claim_idx ON jobs (state, priority DESC, id);
CREATE INDEX jobs_recipe_idx ON jobs (recipe, id);
CREATE INDEX jobs_builder_idx ON jobs (builder_id, id);

CREATE TABLE job_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    builder_id BIGINT REFERENCES builders (id) ON DELETE SET NULL,
    -- SHA-256 (hex) of the job token; NULL once revoked.
    job_token_hash TEXT,
    lease_expires_at BIGINT NOT NULL,
    outcome TEXT
        CHECK (outcome IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'rejected', 'lost')),
    exit_status INTEGER,
    error TEXT,
    assigned_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    UNIQUE (job_id, attempt)
);

-- Live attempts: per builder (reconnect, removal) and by lease expiry (the requeue sweep).
CREATE INDEX job_attempts_live_builder_idx ON job_attempts (builder_id) WHERE finished_at IS NULL;
CREATE INDEX job_attempts_live_lease_idx ON job_attempts (lease_expires_at) WHERE finished_at IS NULL;

CREATE TABLE job_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    at BIGINT NOT NULL,
    detail TEXT
);

CREATE INDEX job_events_job_idx ON job_events (job_id, id);

CREATE TABLE log_chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    location TEXT NOT NULL,
    byte_offset BIGINT NOT NULL,
    length BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    CHECK (first_seq <= last_seq),
    UNIQUE (job_id, attempt, first_seq)
);

CREATE TABLE artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    name TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    statement TEXT,
    statement_signature TEXT,
    published BOOLEAN NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    UNIQUE (job_id, attempt, name)
);

CREATE INDEX artifacts_job_name_idx ON artifacts (job_id, name, attempt);

CREATE TABLE sources (
    sha256 TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    storage_key TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL CHECK (scope IN ('admin', 'submit')),
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);
