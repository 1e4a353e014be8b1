ALTER TABLE builders DROP COLUMN control;
