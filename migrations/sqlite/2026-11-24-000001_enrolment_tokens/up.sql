-- Enrolment tokens: short-lived, use-bounded, revocable secrets with which builders admit
-- their own keys. Only the SHA-256 of a token is stored. Keep in step with migrations/postgres.
CREATE TABLE enrolment_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL DEFAULT '{}',
    max_uses INTEGER NOT NULL CHECK (max_uses >= 1),
    uses INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    last_used_at BIGINT
);
