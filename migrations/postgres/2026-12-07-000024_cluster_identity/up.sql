-- The cluster's backend id (issue 16 item 6): the name signed into every challenge and build
-- statement, the same on every replica sharing this database. One row at most (id = 1); the
-- first backend to start inserts its candidate (its configured `backend_id`, else its public
-- URL) and every later start reads it. Keep in step with migrations/sqlite.
CREATE TABLE cluster_identity (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    backend_id TEXT NOT NULL CHECK (backend_id <> '')
);
