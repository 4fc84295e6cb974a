"""Baselines in the same run: the two Postgres-centred designs jobstream replaces, with the
same task count and the same number of worker processes, in a scratch schema of the same
PostgreSQL.

(a) `http`: the original control plane (`_control_plane.py`, FastAPI on uvicorn, asyncpg
    pool) and W worker processes calling claim, start and complete over HTTP keep-alive;
(b) `skip_locked`: W worker processes claiming rows themselves with SELECT … FOR UPDATE SKIP
    LOCKED, one job per transaction (the original design) or 100 (a well-built queue).

Each worker process runs `concurrency` loops. The clock starts when the rows are inserted
(as jobstream's starts at the first submit) and stops when the last worker has exited, the
queue empty; every row is then checked to be `succeeded`.
"""

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

from jobstream.bench._common import poll_until, rate
from jobstream.bench._cpu import CpuMeter, CpuReport
from jobstream.bench._sql import baseline_query
from jobstream.bench._stack import Child, Servers, log_tail, stop_children
from jobstream.events import JobstreamError
from jobstream.projections import quote_ident
from jobstream.services.stack import free_port

SCHEMA = "jobstream_bench_baseline"
BATCH = 100
READY_TIMEOUT_S = 60.0
MIN_RUN_TIMEOUT_S = 600.0
# Generous: even 20 jobs/s finishes in time.
RUN_TIMEOUT_S_PER_TASK = 0.05
CONTROL_PLANE_POOL = 20
PYTHON = [sys.executable, "-m"]


@dataclass(frozen=True, kw_only=True)
class BaselineResult:
    design: str
    tasks: int
    elapsed_s: float
    tasks_per_s: float
    cpu: CpuReport


@dataclass(frozen=True, kw_only=True)
class BaselineSetup:
    servers: Servers
    tasks: int
    workers: int
    concurrency: int
    log_dir: Path


async def _reset_schema(database_url: str) -> None:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")
        await conn.execute(f"CREATE SCHEMA {quote_ident(SCHEMA)}")
        await conn.execute(f"SET search_path = {quote_ident(SCHEMA)}")
        await conn.execute(baseline_query("create_tables"))
    finally:
        await conn.close()


async def drop_schema(database_url: str) -> None:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} CASCADE")
    finally:
        await conn.close()


# --- the worker processes -----------------------------------------------------------------


@dataclass
class _Workers:
    processes: list[asyncio.subprocess.Process]
    logs: list[Path]

    def name(self, index: int) -> str:
        return f"baseline-worker-{index + 1}"

    def pids(self) -> dict[str, int]:
        return {self.name(i): process.pid for i, process in enumerate(self.processes)}

    def fail(self, index: int, what: str) -> JobstreamError:
        return JobstreamError(f"baseline worker {index + 1} {what}: {log_tail(self.logs[index])}")


@contextlib.asynccontextmanager
async def _worker_processes(
    design: str, *, url: str, setup: BaselineSetup, batch: int = 1
) -> AsyncIterator[_Workers]:
    command = [
        *PYTHON,
        "jobstream.bench._baseline_worker",
        design,
        "--url",
        url,
        "--schema",
        SCHEMA,
        "--concurrency",
        str(setup.concurrency),
        "--batch",
        str(batch),
    ]
    logs = [setup.log_dir / f"{design}-worker-{i + 1}.log" for i in range(setup.workers)]
    workers = _Workers(processes=[], logs=logs)
    setup.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        for log in logs:
            with log.open("ab") as stderr:
                workers.processes.append(
                    await asyncio.create_subprocess_exec(
                        *command,
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=stderr,
                    )
                )
        yield workers
    finally:
        for process in workers.processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _wait_ready(workers: _Workers) -> None:
    for index, process in enumerate(workers.processes):
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT_S)
        if line.strip() != b"ready":
            raise workers.fail(index, "did not get ready")


async def _go_and_wait(workers: _Workers, *, timeout_s: float) -> tuple[int, dict[str, float]]:
    """Release every worker at once; wait for all to exit; return the jobs they did and the
    CPU seconds each reported."""
    for process in workers.processes:
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        await process.stdin.drain()
    done = 0
    cpu_s: dict[str, float] = {}
    for index, process in enumerate(workers.processes):
        assert process.stdout is not None
        output = await asyncio.wait_for(process.stdout.read(), timeout_s)
        if await process.wait() != 0:
            raise workers.fail(index, f"exited with {process.returncode}")
        report = json.loads(output)
        done += int(report["done"])
        cpu_s[workers.name(index)] = float(report["cpu_s"])
    return done, cpu_s


async def _measure(
    design: str, setup: BaselineSetup, workers: _Workers, extra_pids: Mapping[str, int]
) -> BaselineResult:
    """Rows in, workers released, clock stopped when the last worker is done and exits."""
    await _wait_ready(workers)
    pids = {**extra_pids, **workers.pids(), "bench": os.getpid()}
    if setup.servers.postgres_pid is not None:
        pids["postgres"] = setup.servers.postgres_pid
    meter = CpuMeter(pids, trees=frozenset({"postgres"}))
    conn = await asyncpg.connect(
        setup.servers.database_url, timeout=10, server_settings={"search_path": SCHEMA}
    )
    try:
        meter.start()
        started = time.monotonic()
        await conn.execute(baseline_query("insert_jobs"), setup.tasks)
        timeout_s = max(MIN_RUN_TIMEOUT_S, setup.tasks * RUN_TIMEOUT_S_PER_TASK)
        done, worker_cpu_s = await _go_and_wait(workers, timeout_s=timeout_s)
        elapsed_s = time.monotonic() - started
        cpu = meter.stop(exited=worker_cpu_s)
        succeeded = await conn.fetchval(baseline_query("count_succeeded"))
    finally:
        await conn.close()
    if done != setup.tasks or succeeded != setup.tasks:
        raise JobstreamError(
            f"baseline {design}: {done} jobs done, {succeeded} succeeded, of {setup.tasks}"
        )
    return BaselineResult(
        design=design,
        tasks=setup.tasks,
        elapsed_s=round(elapsed_s, 3),
        tasks_per_s=rate(setup.tasks, elapsed_s),
        cpu=cpu,
    )


# --- the designs ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _control_plane(setup: BaselineSetup) -> AsyncIterator[tuple[str, Child]]:
    port = free_port()
    child = Child(
        "control-plane",
        [
            *PYTHON,
            "jobstream.bench._control_plane",
            "--database-url",
            setup.servers.database_url,
            "--schema",
            SCHEMA,
            "--port",
            str(port),
            "--pool-size",
            str(CONTROL_PLANE_POOL),
        ],
        setup.log_dir / "control-plane.log",
    )
    child.start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=2) as client:

            async def healthy() -> bool | None:
                with contextlib.suppress(httpx.HTTPError):
                    return True if (await client.get("/healthz")).status_code == 200 else None
                return None

            await poll_until(
                healthy,
                timeout_s=READY_TIMEOUT_S,
                interval_s=0.1,
                what="the control plane",
                alive=child.check_alive,
            )
        yield url, child
    finally:
        await stop_children([child])


async def measure_http(setup: BaselineSetup) -> BaselineResult:
    await _reset_schema(setup.servers.database_url)
    async with (
        _control_plane(setup) as (url, server),
        _worker_processes("http", url=url, setup=setup) as workers,
    ):
        return await _measure("http", setup, workers, {"control-plane": server.pid})


async def measure_skip_locked(setup: BaselineSetup, *, batch: int) -> BaselineResult:
    await _reset_schema(setup.servers.database_url)
    design = "skip-locked" if batch == 1 else f"skip-locked-batch-{batch}"
    async with _worker_processes(
        "skip-locked", url=setup.servers.database_url, setup=setup, batch=batch
    ) as workers:
        return await _measure(design, setup, workers, {})
