"""`jobstream replay`: the log is the truth; the read models and files are rebuilt from it."""

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from jobstream.events import EVENTS_STREAM, Bus, JobstreamError, job_subject, quote
from jobstream.projections import (
    Connections,
    ReplayReport,
    replay_ndjson,
    replay_postgres,
    replay_stdout,
)

TARGETS = ("postgres", "ndjson", "stdout")
OnProgress = Callable[[int, int], None]


@contextmanager
def progress_bar(label: str, *, enabled: bool) -> Iterator[OnProgress]:
    """A progress bar on stderr with events/s and an ETA; yields the `on_progress` callback."""
    bar = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} events/s"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
    task = bar.add_task(label, total=None, rate="-")
    started = bar.get_time()

    def on_progress(done: int, total: int) -> None:
        elapsed = bar.get_time() - started
        rate = f"{done / elapsed:,.0f}" if elapsed > 0 else "-"
        bar.update(task, completed=done, total=total, rate=rate)

    with bar:
        yield on_progress


async def seq_since(bus: Bus, when: datetime) -> int:
    """The first log sequence at or after `when` (a direct get by start time)."""
    request = json.dumps({"start_time": when.isoformat()}).encode()
    reply = await bus.nc.request(f"$JS.API.DIRECT.GET.{EVENTS_STREAM}", request, timeout=5)
    seq = (reply.headers or {}).get("Nats-Sequence")
    if seq is None:
        raise JobstreamError(f"the log holds no event at or after {when.isoformat()}")
    return int(seq)


async def replay(
    bus: Bus,
    pool: asyncpg.Pool | None,
    *,
    target: str,
    from_seq: int,
    job_id: str | None,
    schema: str,
    results_dir: Path,
    show_progress: bool,
    partitions: int = 1,
    connections: Connections | None = None,
) -> ReplayReport:
    if target == "stdout":
        if job_id is not None and await bus.first_on_subject(job_subject(job_id)) is None:
            raise JobstreamError(f"job {quote(job_id)} not found in the event log")
        return await replay_stdout(bus, sys.stdout.buffer, from_seq=from_seq, job_id=job_id)
    if job_id is not None:
        raise JobstreamError("--job goes with --target stdout only")
    with progress_bar(f"replay → {target}", enabled=show_progress) as on_progress:
        if target == "postgres":
            assert pool is not None
            return await replay_postgres(
                bus,
                pool,
                schema=schema,
                from_seq=from_seq,
                partitions=partitions,
                connections=connections,
                on_progress=on_progress,
            )
        return await replay_ndjson(bus, results_dir, from_seq=from_seq, on_progress=on_progress)
