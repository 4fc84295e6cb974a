"""A schema's read models are written by one layout: one partition count of the projection.

The layout is a row of `projection_layouts` (migration 011) keyed by the projection's name.
Every transaction that writes the read models (a projector's batch, a listing of task rows)
starts with `lock_checkpoint`, which claims the layout if nobody has and checks it, in the
statement that locks the writer's checkpoint row: so the claim commits with the first rows
written, and a writer of another count is refused (`LayoutMismatch`) before it writes
anything, whenever it started. Projectors also check it when they start
(`check_layout`), to refuse at once rather than at their first batch.

The layout stays when the checkpoints go back to 0 (a rewind, a reset by hand): the rows
written by that layout may still be there. To change the count, replay into the new layout
(`jobstream replay --target postgres --partitions N`): the fresh schema, swapped in whole,
carries its own layout row.
"""

import secrets
from collections.abc import Mapping
from typing import NamedTuple

import asyncpg

from jobstream.events import JobstreamError
from jobstream.projections._partitions import Partition
from jobstream.projections._queries import load_queries


class LayoutMismatch(JobstreamError):
    """The schema's read models were built by another number of partitions."""

    def __init__(self, *, built_by: int, partition: Partition) -> None:
        projectors = f"{built_by} projector partition" + ("s" if built_by > 1 else "")
        super().__init__(
            f"the read models were built by {projectors}, and this is {partition}: replay"
            " into the new layout and swap it in first (jobstream replay --target postgres"
            f" --partitions {partition.count}), or run the projectors with"
            f" --partitions {built_by}"
        )
        self.built_by = built_by
        self.partition = partition


async def check_layout(conn: asyncpg.Connection, projection: str, partition: Partition) -> None:
    """`LayoutMismatch` if the schema on `conn`'s search path holds the read models of
    `projection` in another partition count than `partition`'s (claims nothing)."""
    stored = await conn.fetchval(load_queries()["read_layout"], projection)
    if stored is not None and stored != partition.count:
        raise LayoutMismatch(built_by=int(stored), partition=partition)


class Locked(NamedTuple):
    """A checkpoint row as its lock found it."""

    last_seq: int
    # This transaction's token, and that of the transaction that took the row before (None:
    # the row is new, or was last taken before migration 012): a writer that finds its own
    # last transaction's token there knows that nobody else wrote in between.
    writer: int
    prior_writer: int | None


async def lock_checkpoint(
    conn: asyncpg.Connection,
    queries: Mapping[str, str],
    projection: str,
    partition: Partition,
) -> Locked:
    """In the transaction on `conn`: lock `partition`'s checkpoint row of `projection` and
    return it, once the layout is claimed for, or found to be, `partition`'s count; else
    `LayoutMismatch`, before anything is written."""
    writer = secrets.randbits(63)
    row = await conn.fetchrow(
        queries["lock_checkpoint"],
        partition.checkpoint_name(projection),
        projection,
        partition.count,
        writer,
    )
    stored = row["partitions"]
    if stored is None:  # claimed by a transaction that committed while the statement ran
        stored = await conn.fetchval(queries["read_layout"], projection)
    if stored != partition.count:
        # None: the claim that stopped ours was removed by hand since.
        raise LayoutMismatch(built_by=int(stored or 0), partition=partition)
    return Locked(int(row["last_seq"]), writer, row["prior_writer"])
