-- A builder's keys over time (issue 19 item 4). `builders.public_key`/`fingerprint` stay the
-- key the builder authenticates with now; every key it ever had is a row here, valid from
-- `valid_after` until `valid_before` (NULL: still current), in unix milliseconds. A revoked
-- key (`revoked_at`, `revoked_reason`) is left out of the allowed-signers file, so what it
-- signed no longer verifies. A fingerprint belongs to one builder once: a signature's key
-- names exactly one builder. Every existing builder's key is backfilled as valid from the
-- builder's creation. Keep in step with migrations/postgres.
CREATE TABLE builder_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    builder_id BIGINT NOT NULL REFERENCES builders (id) ON DELETE CASCADE,
    public_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    valid_after BIGINT NOT NULL,
    valid_before BIGINT,
    revoked_at BIGINT,
    revoked_reason TEXT,
    CHECK (valid_before IS NULL OR valid_before >= valid_after),
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
);
CREATE INDEX builder_keys_builder_idx ON builder_keys (builder_id, valid_after);

INSERT INTO builder_keys (builder_id, public_key, fingerprint, valid_after)
    SELECT id, public_key, fingerprint, created_at FROM builders;
