-- The operator's pause or drain of a builder, kept on its row so it outlives the builder's
-- sessions and the backend's restarts: NULL (takes jobs), 'paused', 'draining', or
-- 'paused,draining' (paused while draining; resume clears both). Written by the API before
-- the scheduler is told; read when the builder registers. Keep in step with migrations/sqlite.
ALTER TABLE builders ADD COLUMN control TEXT
    CHECK (control IN ('paused', 'draining', 'paused,draining'));
