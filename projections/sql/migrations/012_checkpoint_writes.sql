-- How many transactions have locked each checkpoint row to write (`lock_checkpoint` in
-- sql/projector.sql counts each: a projector's batch, a listing of task rows). A projector
-- that prepared its next batch from the rows its last batch left (projections/_postgres.py)
-- writes it only if nobody else locked the row in between: its own batch is then the one
-- count more, and no other writer changed a row it holds.
ALTER TABLE projection_checkpoints ADD COLUMN IF NOT EXISTS writes bigint NOT NULL DEFAULT 0;
