-- The batches of a streamed job's tasks (`job.tasks_added`) the projector took, one row each.
-- Their task rows are written apart from the event order (`listed` false until then), so a
-- job of a million tasks does not hold back the events that follow it: the first results
-- show while its task rows are still being written. The tasks themselves stay in the log;
-- `seq` is where.
CREATE TABLE IF NOT EXISTS job_batches (
    job_id       text NOT NULL,
    first_index  integer NOT NULL,
    task_count   integer NOT NULL,
    seq          bigint NOT NULL,
    listed       boolean NOT NULL,
    PRIMARY KEY (job_id, first_index)
);
CREATE INDEX IF NOT EXISTS job_batches_unlisted ON job_batches (seq) WHERE NOT listed;
