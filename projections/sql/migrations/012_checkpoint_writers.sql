-- Who last took each checkpoint row to write: `lock_checkpoint` (sql/projector.sql) gives
-- every writer's transaction a random token (a projector's batch, a listing of task rows)
-- and returns the token of the one before. A projector that prepared its next batch from
-- the rows its last batch left (projections/_postgres.py) writes it as prepared only if the
-- transaction before was that batch's own: then no other writer changed a row it holds, in
-- this schema or in one swapped in since.
ALTER TABLE projection_checkpoints
    ADD COLUMN IF NOT EXISTS writer bigint,
    ADD COLUMN IF NOT EXISTS prior_writer bigint;
