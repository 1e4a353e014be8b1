DROP INDEX artifacts_storage_key_idx;
DROP INDEX log_chunks_location_idx;
DROP TABLE blob_deletions;
