-- A running task's last `task.progress` report: a fraction in [0, 1] (NULL: none) and its
-- message.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS progress double precision;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS progress_message text;
