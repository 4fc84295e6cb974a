"""The bulk replay in parallel: one process per partition of the new layout.

Each process (spawned, so it shares nothing with its parent) connects to NATS and
PostgreSQL itself, reads the whole log picking its partition's messages by subject
(`Partition.wants`: the others are not decoded), folds them in memory (`_rules.ReadModel`)
and COPYs its rows into the build schema, whose indexes the parent dropped and builds again
once all are done. No two processes write one row: every row belongs to one job, so to one
partition, or is a worker's row of one partition.
"""

import asyncio
import logging
import multiprocessing
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.sharedctypes import SynchronizedArray

import asyncpg

from jobstream.events import NO_SECURITY, Bus, JobstreamError, NatsSecurity
from jobstream.projections._database import DATA_ERRORS
from jobstream.projections._fold import collector_paused, copy_fold, fold_log
from jobstream.projections._partitions import Partition
from jobstream.projections._rules import ReadModel

log = logging.getLogger(__name__)

POLL_S = 0.2
# A child's exit code when the database refused one of its rows: the replay then takes the
# projector's way, which parks the refused events.
REFUSED_EXIT = 3
_BULK_REFUSED_ERRORS: tuple[type[Exception], ...] = (*DATA_ERRORS, OverflowError, ValueError)


@dataclass(frozen=True)
class Connections:
    """How a replay process reaches NATS and PostgreSQL."""

    nats_urls: list[str]
    database_url: str
    security: NatsSecurity = NO_SECURITY


async def fold_partitions(
    connections: Connections,
    build: str,
    first: int,
    last: int,
    partitions: int,
    on_progress: Callable[[int, int], None],
) -> bool:
    """Fold and COPY `first`..`last` into `build`, one process per partition; False if the
    database refused a row (some rows may then be in `build`)."""
    context = multiprocessing.get_context("spawn")
    reached: SynchronizedArray[int] = context.Array("q", partitions)
    children = [
        context.Process(
            target=_child,
            args=(connections, build, first, last, Partition(index, partitions), reached),
            name=f"jobstream-replay-{index}-of-{partitions}",
        )
        for index in range(partitions)
    ]
    for child in children:
        child.start()
    try:
        while any(child.is_alive() for child in children):
            done = min(reached[:]) - first + 1
            on_progress(max(0, min(done, last - first + 1)), last - first + 1)
            await asyncio.sleep(POLL_S)
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
            child.join()
    codes = [child.exitcode for child in children]
    if any(code == REFUSED_EXIT for code in codes):
        return False
    failed = [index for index, code in enumerate(codes) if code != 0]
    if failed:
        raise JobstreamError(
            f"the replay of partition {failed[0]} of {partitions} failed"
            f" (exit code {codes[failed[0]]}); see its log above"
        )
    return True


def _child(
    connections: Connections,
    build: str,
    first: int,
    last: int,
    partition: Partition,
    reached: "SynchronizedArray[int]",
) -> None:
    # Warnings only: the parent draws a progress bar on the same terminal, and logs the end.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        with collector_paused():
            refused = asyncio.run(
                _fold_partition(connections, build, first, last, partition, reached)
            )
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(REFUSED_EXIT if refused else 0)


async def _fold_partition(
    connections: Connections,
    build: str,
    first: int,
    last: int,
    partition: Partition,
    reached: "SynchronizedArray[int]",
) -> bool:
    """Fold the partition's part of the log and COPY it; True if the database refused a row."""
    started = time.perf_counter()
    bus = await Bus.connect(
        connections.nats_urls,
        name=f"jobstream-replay-{partition.index}",
        security=connections.security,
    )
    try:
        fold = ReadModel(list_batches=True, partition=partition.index)

        def on_reached(seq: int) -> None:
            reached[partition.index] = seq

        await fold_log(bus, fold, first, last, partition=partition, on_reached=on_reached)
    finally:
        await bus.close()
    folded = time.perf_counter()
    pool = await asyncpg.create_pool(connections.database_url, min_size=1, max_size=8)
    try:
        await copy_fold(pool, build, fold)
    except _BULK_REFUSED_ERRORS as exc:
        log.warning("replay of %s: the database refused a row (%s)", partition, exc)
        return True
    finally:
        await pool.close()
    log.info(
        "replay of %s, seq %d..%d: read and folded in %.2fs, written in %.2fs",
        partition,
        first,
        last,
        folded - started,
        time.perf_counter() - folded,
    )
    return False
