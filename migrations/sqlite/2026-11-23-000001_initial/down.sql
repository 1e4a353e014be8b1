DROP TABLE api_tokens;
DROP TABLE sources;
DROP TABLE artifacts;
DROP TABLE log_chunks;
DROP TABLE job_events;
DROP TABLE job_attempts;
DROP TABLE jobs;
DROP TABLE builders;
