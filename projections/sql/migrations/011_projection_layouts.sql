-- The layout of each projection: how many partitions write its read models
-- (projections/_layout.py). The first batch a projector commits claims it, in the batch's
-- own transaction, and every batch checks it (`lock_checkpoint` in sql/projector.sql), so
-- two layouts started together on an empty schema cannot both write: the second to commit
-- is refused (`LayoutMismatch`) and writes nothing. A replay's fresh schema carries the
-- layout it built.
CREATE TABLE IF NOT EXISTS projection_layouts (
    projection  text PRIMARY KEY,
    partitions  integer NOT NULL CHECK (partitions > 0)
);

-- A schema of earlier versions: the layout of its checkpoints that have applied something,
-- named as events/_read_model.py's `layout_of` reads them (`<projection>/<i>-of-<n>`, else
-- one partition). Of two layouts (only by hand), the one that reached further.
INSERT INTO projection_layouts (projection, partitions)
SELECT DISTINCT ON (projection) projection, partitions
FROM (
    SELECT
        coalesce(m[1], c.projection) AS projection,
        coalesce(m[3]::integer, 1) AS partitions,
        c.last_seq
    FROM projection_checkpoints AS c
    LEFT JOIN LATERAL regexp_match(c.projection, '^([^/]*)/([0-9]{1,9})-of-([0-9]{1,9})$') AS m
        ON true
    WHERE c.last_seq > 0
) AS layouts
WHERE partitions > 0
ORDER BY projection, last_seq DESC
ON CONFLICT (projection) DO NOTHING;
