-- The registry follower's state. Keep in step with the other backend's migration.
--
-- registry_versions: every crate version the follower has seen, once per registry. Its
-- primary key is the de-duplication of discovery: a version is queued by whichever fetch
-- (or replica) inserts its row first, in the same transaction as its jobs.
-- status: existing (in the index before following began; built only by a backfill),
-- queued (its metadata job is queued or running), planned (the builds its metadata asked
-- for are queued), library (no binaries: nothing to build), failed (the metadata job failed;
-- reason says why), skipped (reason says why: deny list), yanked (yanked when first seen;
-- never built). `yanked` follows the index afterwards.
CREATE TABLE registry_versions (
    registry TEXT NOT NULL,
    crate_name TEXT NOT NULL,
    version TEXT NOT NULL,
    cksum TEXT NOT NULL,
    yanked BOOLEAN NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (registry, crate_name, version)
);

-- One row per queued build: (crate, version, target, recipe) is built at most once, by a
-- new release or a backfill alike. parent_job_id: the metadata job a build follows from.
CREATE TABLE registry_builds (
    registry TEXT NOT NULL,
    crate_name TEXT NOT NULL,
    version TEXT NOT NULL,
    target TEXT NOT NULL,
    recipe TEXT NOT NULL,
    job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    backfill BOOLEAN NOT NULL,
    parent_job_id BIGINT REFERENCES jobs (id) ON DELETE SET NULL,
    PRIMARY KEY (registry, crate_name, version, target, recipe)
);
CREATE INDEX registry_builds_job_idx ON registry_builds (job_id);
CREATE INDEX registry_builds_parent_idx ON registry_builds (parent_job_id);
CREATE INDEX registry_versions_status_idx ON registry_versions (registry, status, seen_at);

-- Where the follower stands: the git index commit it has processed, each watched crate's
-- sparse ETag, the last fetch and its error. Written after what it covers is recorded, so a
-- restart repeats at most the last step (which the keys above make harmless).
CREATE TABLE registry_cursors (
    registry TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (registry, name)
);
