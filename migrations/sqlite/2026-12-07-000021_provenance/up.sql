-- In-toto provenance (issue 19 item 1). An attempt keeps, beside its SSHSIG-signed
-- statement, the DSSE signature of the same text and, for a succeeded build, the
-- reproduction statement with its two signatures (NULL for statements of older builders).
-- `statement_signatures` holds the signatures of the job's published statement (the one
-- /statement serves): one row for an ordinary job, written in the completion's
-- transaction; `dsse_sig` is NULL for a buildfleet-statement/v1 text. Jobs published before
-- this migration have no row. Keep in step with the other database's migration.
ALTER TABLE job_attempts ADD COLUMN dsse_signature TEXT;
ALTER TABLE job_attempts ADD COLUMN reproduction_statement TEXT;
ALTER TABLE job_attempts ADD COLUMN reproduction_signature TEXT;
ALTER TABLE job_attempts ADD COLUMN reproduction_dsse_signature TEXT;

CREATE TABLE statement_signatures (
    job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    signer_fingerprint TEXT NOT NULL,
    builder_id BIGINT REFERENCES builders (id) ON DELETE SET NULL,
    sshsig TEXT NOT NULL,
    dsse_sig TEXT,
    PRIMARY KEY (job_id, signer_fingerprint)
);
