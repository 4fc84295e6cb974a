"""The servers a bench run measures on (embedded in a fresh directory, or configured), and the
jobstream processes it starts on them: dispatcher, projector and workers, as real children."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from jobstream.bench._options import BenchOptions
from jobstream.events import JobstreamError
from jobstream.projections import DEFAULT_SCHEMA, quote_ident
from jobstream.services.stack import NatsServer, PostgresServer, kill_process, stop_processes

BENCH_DATABASE = "jobstream"
CONFIGURED_SCHEMA_PREFIX = "jobstream_bench_run_"
STOP_TIMEOUT_S = 15.0
LOG_TAIL_CHARS = 2_000


@dataclass(frozen=True, kw_only=True)
class Servers:
    nats_url: str
    database_url: str
    schema: str
    embedded: bool
    nats_sync: str
    nats_pid: int | None = None
    postgres_pid: int | None = None


@contextlib.asynccontextmanager
async def bench_servers(options: BenchOptions, run_dir: Path, run: int) -> AsyncIterator[Servers]:
    """Embedded servers in `run_dir` (fresh for each run), or the configured ones with a fresh
    read-model schema for this run, dropped afterwards."""
    if options.nats_url is not None and options.database_url is not None:
        schema = f"{CONFIGURED_SCHEMA_PREFIX}{os.getpid()}_{run}"
        try:
            yield Servers(
                nats_url=options.nats_url,
                database_url=options.database_url,
                schema=schema,
                embedded=False,
                nats_sync="as configured on the server",
            )
        finally:
            await _drop_schema(options.database_url, schema)
        return
    nats = NatsServer(run_dir / "nats", sync_always=options.nats_sync_always)
    postgres = PostgresServer(run_dir / "postgres" / "data", durable=True)
    try:
        await asyncio.to_thread(nats.start)
        await asyncio.to_thread(postgres.start)
        await _create_database(postgres.url, BENCH_DATABASE)
        assert nats.process is not None and postgres.process is not None
        yield Servers(
            nats_url=nats.url,
            database_url=postgres.url_for(BENCH_DATABASE),
            schema=DEFAULT_SCHEMA,
            embedded=True,
            nats_sync="always" if options.nats_sync_always else "default (fsync every 2 min)",
            nats_pid=nats.process.pid,
            postgres_pid=postgres.process.pid,
        )
    finally:
        await asyncio.to_thread(postgres.stop)
        await asyncio.to_thread(nats.stop)


async def _create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
    finally:
        await conn.close()


async def _drop_schema(database_url: str, schema: str) -> None:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await conn.close()


# --- child processes ----------------------------------------------------------------------


def log_tail(path: Path) -> str:
    """The end of a child's log, for an error message."""
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError:
        return "(no log)"


@dataclass
class Child:
    name: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=subprocess.DEVNULL,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise JobstreamError(
                f"{self.name} exited with {self.process.returncode}: {self.log_tail()}"
            )

    def log_tail(self) -> str:
        return log_tail(self.log_path)

    def kill(self) -> None:
        kill_process(self.process)


@dataclass
class ProductProcesses:
    """The jobstream processes of one run; workers are `worker-1` … with known worker ids."""

    dispatcher: Child
    # One per partition; the first is named `projector`.
    projectors: list[Child]
    workers: list[Child]
    worker_ids: list[str]
    lease_s: float

    @property
    def children(self) -> list[Child]:
        return [self.dispatcher, *self.projectors, *self.workers]

    def pids(self) -> dict[str, int]:
        return {child.name: child.pid for child in self.children if child.process is not None}

    def check_alive(self) -> None:
        for child in self.children:
            killed = child.process is not None and child.process.returncode == -signal.SIGKILL
            if not killed:
                child.check_alive()


JOBSTREAM = [sys.executable, "-m", "jobstream.cli"]


def _server_args(servers: Servers, run_dir: Path) -> list[str]:
    return [
        "--nats-url",
        servers.nats_url,
        "--database-url",
        servers.database_url,
        "--data-dir",
        str(run_dir / "data"),
    ]


def _product_processes(
    options: BenchOptions, servers: Servers, run_dir: Path, run: int
) -> ProductProcesses:
    base = _server_args(servers, run_dir)
    lease = ["--lease-s", str(options.lease_s)]
    logs = run_dir / "logs"
    worker_ids = [f"bench-{os.getpid()}-r{run}-w{index + 1}" for index in range(options.workers)]
    workers = [
        Child(
            f"worker-{index + 1}",
            [
                *JOBSTREAM,
                "worker",
                *base,
                *lease,
                "--queue",
                options.queue,
                "--concurrency",
                str(options.concurrency),
                "--worker-id",
                worker_id,
            ],
            logs / f"worker-{index + 1}.log",
        )
        for index, worker_id in enumerate(worker_ids)
    ]
    return ProductProcesses(
        dispatcher=Child(
            "dispatcher", [*JOBSTREAM, "dispatcher", *base, *lease], logs / "dispatcher.log"
        ),
        projectors=[
            Child(
                "projector" if index == 0 else f"projector-{index}",
                [
                    *JOBSTREAM,
                    "projector",
                    *base,
                    "--schema",
                    servers.schema,
                    "--partitions",
                    str(options.projectors),
                    "--partition",
                    str(index),
                ],
                logs / f"projector-{index}.log",
            )
            for index in range(options.projectors)
        ],
        workers=workers,
        worker_ids=worker_ids,
        lease_s=options.lease_s,
    )


@contextlib.asynccontextmanager
async def product_processes(
    options: BenchOptions, servers: Servers, run_dir: Path, run: int
) -> AsyncIterator[ProductProcesses]:
    """Start the dispatcher, the projectors and the workers; stop them all (workers first)."""
    processes = _product_processes(options, servers, run_dir, run)
    try:
        for child in processes.children:
            child.start()
        yield processes
    finally:
        await stop_children(processes.workers)
        await stop_children([processes.dispatcher, *processes.projectors])


async def stop_children(children: list[Child]) -> None:
    """SIGTERM to all at once, then wait (SIGKILL for one that hangs)."""
    processes = [child.process for child in children if child.process is not None]
    await asyncio.to_thread(
        stop_processes, processes, signum=signal.SIGTERM, timeout_s=STOP_TIMEOUT_S
    )
