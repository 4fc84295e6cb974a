"""Partitions: the live Postgres projection of one log by 1, 2 and 4 projector processes
(`jobstream projector --only postgres --partitions N --partition i`), each count into a
fresh schema → events/s, and CPU per event of the projectors, PostgreSQL and nats-server.

The log is the replay section's: what the run wrote, topped up with synthetic history (jobs
of 1,000 no-op tasks: submitted, each task succeeded, completed), so it holds jobs of every
partition. The figures are taken from the moment the slowest partition has applied 10 % of
the log to the moment it has applied all of it: the processes' start-up is not counted.
"""

import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from jobstream.bench._common import rate
from jobstream.bench._cpu import CpuMeter, CpuReport
from jobstream.bench._replay import fill_log
from jobstream.events import Bus, combined_checkpoints
from jobstream.projections import migrate, quote_ident
from jobstream.services.stack import stop_processes

PARTITION_COUNTS = (1, 2, 4)
SCHEMA_PREFIX = "jobstream_bench_partitions_"
START_FRACTION = 0.1
POLL_S = 0.05
DEADLINE_S = 600.0
PROJECTOR_PREFIX = "projector-"
STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True, kw_only=True)
class PartitionRun:
    partitions: int
    events: int
    seconds: float
    events_per_s: float
    # CPU microseconds per event of the log: the projector processes together, PostgreSQL
    # (its backends) and nats-server.
    projectors_us_per_event: float
    postgres_us_per_event: float
    nats_us_per_event: float
    cpu: CpuReport


async def measure_partitions(
    bus: Bus,
    database_url: str,
    nats_url: str,
    meter_for: Callable[[Mapping[str, int]], CpuMeter],
    *,
    min_events: int,
    counts: tuple[int, ...] = PARTITION_COUNTS,
) -> list[PartitionRun]:
    missing = min_events - await bus.stream_last_seq()
    if missing > 0:
        await fill_log(bus, missing)
    last = await bus.stream_last_seq()
    return [await _project(database_url, nats_url, meter_for, count, last) for count in counts]


async def _project(
    database_url: str,
    nats_url: str,
    meter_for: Callable[[Mapping[str, int]], CpuMeter],
    count: int,
    last: int,
) -> PartitionRun:
    schema = f"{SCHEMA_PREFIX}{count}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
        await migrate(conn, schema)
        with tempfile.TemporaryDirectory(prefix="jobstream-bench-partitions-") as data_dir:
            processes = [
                _start(nats_url, database_url, schema, Path(data_dir), index, count)
                for index in range(count)
            ]
            try:
                meter = meter_for(
                    {f"{PROJECTOR_PREFIX}{i}": p.pid for i, p in enumerate(processes)}
                )
                start = max(1, int(last * START_FRACTION))
                first = await _wait_for(conn, schema, start, processes, listed=False)
                meter.start()
                started = time.monotonic()
                await _wait_for(conn, schema, last, processes, listed=True)
                seconds = time.monotonic() - started
                cpu = meter.stop()
            finally:
                await asyncio.to_thread(
                    stop_processes, processes, signum=signal.SIGTERM, timeout_s=STOP_TIMEOUT_S
                )
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await conn.close()
    events = last - first
    return PartitionRun(
        partitions=count,
        events=events,
        seconds=round(seconds, 3),
        events_per_s=rate(events, seconds),
        projectors_us_per_event=_us_per_event(
            cpu, seconds, events, lambda name: name.startswith(PROJECTOR_PREFIX)
        ),
        postgres_us_per_event=_us_per_event(cpu, seconds, events, lambda name: name == "postgres"),
        nats_us_per_event=_us_per_event(cpu, seconds, events, lambda name: name == "nats-server"),
        cpu=cpu,
    )


def _start(
    nats_url: str, database_url: str, schema: str, data_dir: Path, index: int, count: int
) -> "subprocess.Popen[bytes]":
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobstream.cli",
            "projector",
            "--only",
            "postgres",
            "--nats-url",
            nats_url,
            "--database-url",
            database_url,
            "--data-dir",
            str(data_dir),
            "--schema",
            schema,
            "--partitions",
            str(count),
            "--partition",
            str(index),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _wait_for(
    conn: asyncpg.Connection,
    schema: str,
    seq: int,
    processes: list["subprocess.Popen[bytes]"],
    *,
    listed: bool,
) -> int:
    """Wait until every partition applied the log up to `seq` (`listed`: the task rows of
    its jobs included, which the listers write a little after their batches); return how far
    the slowest got."""
    deadline = time.monotonic() + DEADLINE_S
    ident = quote_ident(schema)
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"a projector exited with {process.returncode}")
        rows = await conn.fetch(f"SELECT projection, last_seq FROM {ident}.projection_checkpoints")
        reached = combined_checkpoints({row[0]: row[1] for row in rows}).get("postgres", 0)
        if reached >= seq and not (
            listed
            and await conn.fetchval(f"SELECT count(*) FROM {ident}.job_batches WHERE NOT listed")
        ):
            return int(reached)
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"the projectors did not reach seq {seq} in {DEADLINE_S:.0f}s")


def _us_per_event(
    cpu: CpuReport, seconds: float, events: int, chosen: Callable[[str], bool]
) -> float:
    """CPU microseconds per event of the processes `chosen` picks (their percent of one core
    over `seconds`)."""
    percent = sum(value for name, value in cpu.per_process.items() if chosen(name))
    return round(percent / 100 * seconds / max(1, events) * 1e6, 1)
