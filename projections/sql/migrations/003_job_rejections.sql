-- A job the dispatcher set aside (job.rejected): status 'rejected', and why.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS error text;
