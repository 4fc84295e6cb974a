"""One bench run: fresh servers, then the ceiling, the baselines and jobstream's own sections,
each with nothing else busy; and the loop over `--runs`."""

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg

from jobstream.bench._api_load import LoadPlan, measure_api
from jobstream.bench._baselines import (
    BATCH,
    BaselineSetup,
    drop_schema,
    measure_http,
    measure_skip_locked,
)
from jobstream.bench._ceiling import measure_ceiling
from jobstream.bench._common import read_model_pool
from jobstream.bench._cpu import CpuMeter
from jobstream.bench._crawl import measure_crawl
from jobstream.bench._environment import describe
from jobstream.bench._latency import measure_latency
from jobstream.bench._one_big_job import measure_one_big_job
from jobstream.bench._options import CHUNK_SIZE, REPLAY_PROCESSES, BenchOptions
from jobstream.bench._partitions import measure_partitions
from jobstream.bench._priority import measure_priority
from jobstream.bench._ready import wait_until_ready
from jobstream.bench._recovery import measure_recovery
from jobstream.bench._replay import measure_replay
from jobstream.bench._stack import ProductProcesses, Servers, bench_servers, product_processes
from jobstream.bench._throughput import ThroughputResult, measure_throughput
from jobstream.events import Bus, ensure_buckets, ensure_streams
from jobstream.projections import Connections

Progress = Callable[[str], None]
RunFigures = dict[str, Any]


def empty_figures() -> RunFigures:
    """Every headline key, null until its section has run."""
    return {
        "tasks_per_s": None,
        "worker_tasks_per_s": None,
        "worker_rss_growth_percent": None,
        "chunked_tasks_per_s": None,
        "baseline_http_tasks_per_s": None,
        "baseline_skip_locked_tasks_per_s": None,
        "baseline_skip_locked_batch_tasks_per_s": None,
        "latency_ms": None,
        "priority_start_ms": None,
        "one_big_job_submit_s": None,
        "one_big_job_tasks_per_s": None,
        "one_big_job_small_jobs_tasks_per_s": None,
        "one_big_job_ratio": None,
        "first_task_visible_s": None,
        "one_big_job_submit_rss_mib": None,
        "one_big_job_dispatcher_rss_mib": None,
        "one_big_job_projector_rss_mib": None,
        "crawl_pages_per_s": None,
        "crawl_target_pages_per_s": None,
        "recovery_s": None,
        "recovery_restart_s": None,
        "lease_s": None,
        "replay_events_per_s": None,
        "replay_parallel_events_per_s": None,
        "partitions": None,
        "ceiling_publish_per_s": None,
        "ceiling_consume_per_s": None,
        "api_ms": None,
        "dashboard_requests": None,
    }


async def _ceiling(servers: Servers, options: BenchOptions, run: RunFigures) -> None:
    ceiling = await measure_ceiling(
        servers.nats_url, _server_meter(servers), messages=options.ceiling_messages
    )
    run["ceiling_publish_per_s"] = ceiling.publish_per_s
    run["ceiling_consume_per_s"] = ceiling.consume_per_s
    run["detail"]["ceiling"] = asdict(ceiling)


async def _baselines(
    servers: Servers, options: BenchOptions, run: RunFigures, log_dir: Path, progress: Progress
) -> None:
    setup = BaselineSetup(
        servers=servers,
        tasks=options.tasks,
        workers=options.workers,
        concurrency=options.baseline_concurrency,
        log_dir=log_dir,
    )
    try:
        progress("baseline: HTTP control plane")
        http = await measure_http(setup)
        progress("baseline: SKIP LOCKED, one job per transaction")
        single = await measure_skip_locked(setup, batch=1)
        progress(f"baseline: SKIP LOCKED, {BATCH} jobs per transaction")
        batched = await measure_skip_locked(setup, batch=BATCH)
    finally:
        await drop_schema(servers.database_url)
    run["baseline_http_tasks_per_s"] = http.tasks_per_s
    run["baseline_skip_locked_tasks_per_s"] = single.tasks_per_s
    run["baseline_skip_locked_batch_tasks_per_s"] = batched.tasks_per_s
    run["detail"]["baselines"] = {r.design: asdict(r) for r in (http, single, batched)}


async def _replay(servers: Servers, options: BenchOptions, run: RunFigures) -> None:
    """After jobstream's processes have stopped: nothing acts on the synthetic history."""
    bus = await Bus.connect([servers.nats_url], name="jobstream-bench-replay")
    try:
        await ensure_streams(bus.js)
        result = await measure_replay(
            bus,
            servers.database_url,
            _server_meter(servers),
            min_events=options.replay_events,
        )
        parallel = await measure_replay(
            bus,
            servers.database_url,
            _server_meter(servers),
            min_events=options.replay_events,
            partitions=REPLAY_PROCESSES,
            connections=Connections([servers.nats_url], servers.database_url),
        )
    finally:
        await bus.close()
    run["replay_events_per_s"] = result.events_per_s
    run["replay_parallel_events_per_s"] = parallel.events_per_s
    run["detail"]["replay"] = asdict(result)
    run["detail"]["replay_parallel"] = asdict(parallel)


async def _partitions(servers: Servers, options: BenchOptions, run: RunFigures) -> None:
    """After jobstream's processes have stopped, on the replay section's log."""
    bus = await Bus.connect([servers.nats_url], name="jobstream-bench-partitions")
    try:
        await ensure_streams(bus.js)
        results = await measure_partitions(
            bus,
            servers.database_url,
            servers.nats_url,
            lambda extra: _server_meter(servers, dict(extra)),
            min_events=options.replay_events,
        )
    finally:
        await bus.close()
    run["partitions"] = {
        str(result.partitions): {
            "events_per_s": result.events_per_s,
            "projectors_us_per_event": result.projectors_us_per_event,
            "postgres_us_per_event": result.postgres_us_per_event,
            "nats_us_per_event": result.nats_us_per_event,
        }
        for result in results
    }
    run["detail"]["partitions"] = [asdict(result) for result in results]


async def _api(servers: Servers, options: BenchOptions, run: RunFigures, run_dir: Path) -> None:
    """The API over seeded read models (its own schema), after everything else has stopped."""
    bus = await Bus.connect([servers.nats_url], name="jobstream-bench-api")
    try:
        # The dashboard's live stream reads the log; the API watches the liveness bucket.
        await ensure_streams(bus.js)
        await ensure_buckets(bus.js)
    finally:
        await bus.close()
    result = await measure_api(
        database_url=servers.database_url,
        nats_url=servers.nats_url,
        meter_for=lambda extra: _server_meter(servers, extra),
        plan=LoadPlan(
            small_jobs=options.api_small_jobs,
            big_job_tasks=options.api_tasks,
            requests=options.api_requests,
            min_requests=options.api_min_requests,
            budget_s=options.api_budget_s,
            warmup=options.api_warmup,
            page_window_s=options.page_window_s,
        ),
        run_dir=run_dir,
    )
    run["api_ms"] = {
        name: {"p50": timing.p50_ms, "p99": timing.p99_ms}
        for name, timing in result.endpoints.items()
    }
    if result.page_views is not None:
        run["dashboard_requests"] = {
            name: view.api_requests for name, view in result.page_views.items()
        }
    run["detail"]["api"] = asdict(result)


def _server_meter(servers: Servers, extra: dict[str, int] | None = None) -> CpuMeter:
    """CPU of the bench's own process, the servers (PostgreSQL with its backends) and `extra`."""
    pids = {**(extra or {}), "bench": os.getpid()}
    if servers.nats_pid is not None:
        pids["nats-server"] = servers.nats_pid
    if servers.postgres_pid is not None:
        pids["postgres"] = servers.postgres_pid
    return CpuMeter(pids, trees=frozenset({"postgres"}))


def _meter(servers: Servers, processes: ProductProcesses) -> CpuMeter:
    return _server_meter(servers, processes.pids())


@dataclass(frozen=True, kw_only=True)
class _Context:
    """What jobstream's own sections share: the running processes and the connections."""

    bus: Bus
    pool: asyncpg.Pool
    processes: ProductProcesses
    servers: Servers
    options: BenchOptions
    run: RunFigures
    progress: Progress
    run_dir: Path


async def _measure_throughput(ctx: _Context, chunk_size: int | None = None) -> ThroughputResult:
    options = ctx.options
    return await measure_throughput(
        ctx.bus,
        ctx.pool,
        _meter(ctx.servers, ctx.processes),
        tasks=options.tasks,
        jobs=options.jobs,
        queue=options.queue,
        chunk_size=chunk_size,
        alive=ctx.processes.check_alive,
    )


async def _throughput(ctx: _Context) -> None:
    ctx.progress(f"throughput: {ctx.options.tasks} no-op tasks in {ctx.options.jobs} jobs")
    result = await _measure_throughput(ctx)
    ctx.run["tasks_per_s"] = result.tasks_per_s
    ctx.run["worker_tasks_per_s"] = result.worker_tasks_per_s
    ctx.run["worker_rss_growth_percent"] = result.worker_rss.growth_percent
    ctx.run["detail"]["throughput"] = asdict(result)


async def _chunked(ctx: _Context) -> None:
    ctx.progress(f"chunked: {ctx.options.tasks} no-op tasks, {CHUNK_SIZE} per message")
    result = await _measure_throughput(ctx, chunk_size=CHUNK_SIZE)
    ctx.run["chunked_tasks_per_s"] = result.tasks_per_s
    ctx.run["detail"]["chunked"] = asdict(result)


async def _latency(ctx: _Context) -> None:
    options = ctx.options
    ctx.progress(f"latency: {options.latency_rate_per_s:.0f} tasks/s")
    latency = await measure_latency(
        ctx.bus,
        ctx.pool,
        _meter(ctx.servers, ctx.processes),
        rate_per_s=options.latency_rate_per_s,
        duration_s=options.latency_duration_s,
        queue=options.queue,
        alive=ctx.processes.check_alive,
    )
    ctx.run["latency_ms"] = {
        "submit_to_started": asdict(latency.submit_to_started),
        "submit_to_done": asdict(latency.submit_to_done),
    }
    ctx.run["detail"]["latency"] = asdict(latency)


async def _priority(ctx: _Context) -> None:
    options = ctx.options
    ctx.progress(f"priority: a high job behind {options.tasks} queued normal tasks")
    result = await measure_priority(
        ctx.bus,
        ctx.pool,
        _meter(ctx.servers, ctx.processes),
        backlog_tasks=options.tasks,
        slots=options.workers * options.concurrency,
        queue=options.queue,
        alive=ctx.processes.check_alive,
    )
    ctx.run["priority_start_ms"] = result.start_ms
    ctx.run["detail"]["priority"] = asdict(result)


async def _one_big_job(ctx: _Context) -> None:
    options = ctx.options
    ctx.progress(
        f"one_big_job: {options.tasks} no-op tasks in one job from a file through"
        f" `jobstream submit`, then in {options.jobs} jobs"
    )
    result = await measure_one_big_job(
        ctx.bus,
        ctx.pool,
        _meter(ctx.servers, ctx.processes),
        tasks=options.tasks,
        jobs=options.jobs,
        queue=options.queue,
        nats_url=ctx.servers.nats_url,
        work_dir=ctx.run_dir,
        alive=ctx.processes.check_alive,
    )
    ctx.run["one_big_job_submit_s"] = result.submit_s
    ctx.run["one_big_job_tasks_per_s"] = result.tasks_per_s
    ctx.run["one_big_job_small_jobs_tasks_per_s"] = result.small_jobs.tasks_per_s
    ctx.run["one_big_job_ratio"] = result.ratio
    ctx.run["first_task_visible_s"] = result.first_task_visible_s
    ctx.run["one_big_job_submit_rss_mib"] = result.submit_peak_rss_mib
    ctx.run["one_big_job_dispatcher_rss_mib"] = result.rss.peak_mib["dispatcher"]
    ctx.run["one_big_job_projector_rss_mib"] = result.rss.peak_mib["projector"]
    ctx.run["detail"]["one_big_job"] = asdict(result)


async def _crawl(ctx: _Context) -> None:
    options = ctx.options
    ctx.progress(
        f"crawl: {options.crawl_domains} local domains at {options.crawl_rate_per_s:g}"
        f" pages/s each, for about {options.crawl_duration_s:g}s"
    )
    result = await measure_crawl(
        ctx.bus,
        ctx.pool,
        _meter(ctx.servers, ctx.processes),
        domains=options.crawl_domains,
        rate_per_domain=options.crawl_rate_per_s,
        duration_s=options.crawl_duration_s,
        queue=options.queue,
        alive=ctx.processes.check_alive,
    )
    ctx.run["crawl_pages_per_s"] = result.pages_per_s
    ctx.run["crawl_target_pages_per_s"] = result.target_pages_per_s
    ctx.run["detail"]["crawl"] = asdict(result)


async def _recovery(ctx: _Context) -> None:
    options = ctx.options
    ctx.progress(f"recovery: SIGKILL a worker (lease {options.lease_s}s)")
    recovery = await measure_recovery(
        ctx.bus,
        ctx.pool,
        ctx.processes,
        concurrency=options.concurrency,
        task_s=options.recovery_task_s,
        queue=options.queue,
        alive=ctx.processes.check_alive,
    )
    ctx.run["recovery_s"] = recovery.recovery_s
    ctx.run["recovery_restart_s"] = recovery.restart_s
    ctx.run["lease_s"] = recovery.lease_s
    ctx.run["detail"]["recovery"] = asdict(recovery)


# Latency first: after the throughput sections PostgreSQL is still digesting their rows
# (autovacuum, checkpoints) for a while, and a light load would be measured against that.
_PRODUCT_MEASURES: tuple[tuple[str, Callable[[_Context], Awaitable[None]]], ...] = (
    ("latency", _latency),
    ("priority", _priority),
    ("throughput", _throughput),
    ("chunked", _chunked),
    ("one_big_job", _one_big_job),
    ("crawl", _crawl),
    ("recovery", _recovery),
)


async def _product(
    servers: Servers,
    options: BenchOptions,
    run: RunFigures,
    run_dir: Path,
    index: int,
    progress: Progress,
) -> None:
    progress(f"starting dispatcher, projector and {options.workers} workers")
    async with product_processes(options, servers, run_dir, index) as processes:
        bus = await Bus.connect([servers.nats_url], name="jobstream-bench")
        pool = await read_model_pool(servers.database_url, servers.schema)
        try:
            await ensure_streams(bus.js)
            await wait_until_ready(
                bus,
                pool,
                processes,
                queue=options.queue,
                tasks=options.workers * options.concurrency,
            )
            ctx = _Context(
                bus=bus,
                pool=pool,
                processes=processes,
                servers=servers,
                options=options,
                run=run,
                progress=progress,
                run_dir=run_dir,
            )
            for section, measure in _PRODUCT_MEASURES:
                if options.wants(section):
                    await measure(ctx)
        finally:
            await pool.close()
            await bus.close()


@contextlib.contextmanager
def timed(run: RunFigures, section: str) -> Iterator[None]:
    """Record how long a section took, in the run's detail."""
    started = time.monotonic()
    try:
        yield
    finally:
        run["detail"].setdefault("section_s", {})[section] = round(time.monotonic() - started, 1)


@contextlib.asynccontextmanager
async def _run_dir(progress: Progress) -> AsyncIterator[Path]:
    """A fresh directory per run, removed after a good run and kept (logs) after a failure."""
    path = Path(tempfile.mkdtemp(prefix="jobstream-bench-"))
    try:
        yield path
    except BaseException:
        progress(f"run failed; its servers' data and the processes' logs are in {path}")
        raise
    shutil.rmtree(path, ignore_errors=True)


async def run_once(
    options: BenchOptions, index: int, progress: Progress
) -> tuple[RunFigures, dict[str, Any]]:
    """One run; returns its figures and the environment it ran in."""
    started = time.monotonic()
    run = empty_figures() | {"detail": {"load_average_at_start": os.getloadavg()}}
    async with _run_dir(progress) as run_dir, bench_servers(options, run_dir, index) as servers:
        progress(f"servers in {run_dir}" if servers.embedded else "configured servers")
        environment = await describe(servers)
        if options.wants("ceiling"):
            progress("ceiling: raw JetStream publish and pull+ack")
            with timed(run, "ceiling"):
                await _ceiling(servers, options, run)
        if options.wants("baselines"):
            with timed(run, "baselines"):
                await _baselines(servers, options, run, run_dir / "logs", progress)
        if options.wants_product():
            with timed(run, "jobstream"):
                await _product(servers, options, run, run_dir, index, progress)
        if options.wants("replay"):
            progress(f"replay: rebuild the read models from a log of >= {options.replay_events}")
            with timed(run, "replay"):
                await _replay(servers, options, run)
        if options.wants("partitions"):
            progress(
                f"partitions: project a log of >= {options.replay_events} events by 1, 2 and 4"
                " projector processes"
            )
            with timed(run, "partitions"):
                await _partitions(servers, options, run)
        if options.wants("api"):
            progress(
                f"api: read models of {options.api_small_jobs} jobs and one of"
                f" {options.api_tasks} tasks, each endpoint timed"
            )
            with timed(run, "api"):
                await _api(servers, options, run, run_dir)
    run["wall_s"] = round(time.monotonic() - started, 1)
    return run, environment
