-- Blobs whose rows are gone, waiting to be removed from storage (issue 17: retention on object
-- storage). A key is recorded in the transaction that deletes the rows pointing at it (expired
-- artifacts and logs, an admin's delete), removed from storage after the commit, and
-- forgotten once removed. A removal that fails stays recorded and is tried again at
-- `next_attempt_at` (with a back-off; `attempts` and `last_error` say how it went), so a
-- store that fails or is down leaks nothing. `next_attempt_at` is also the lease of whoever
-- recorded or claimed the key and is removing it. Keep in step with migrations/postgres.
CREATE TABLE blob_deletions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    storage_key TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX blob_deletions_due_idx ON blob_deletions (next_attempt_at, id);
CREATE INDEX blob_deletions_key_idx ON blob_deletions (storage_key);

-- Before removing a recorded blob the janitor asks whether a row points at it again.
CREATE INDEX log_chunks_location_idx ON log_chunks (location);
CREATE INDEX artifacts_storage_key_idx ON artifacts (storage_key);
