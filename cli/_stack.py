"""`jobstream up`: the embedded servers (when no URLs are configured) and a supervised tree of
processes — dispatcher, workers, projectors, API — that stops cleanly on Ctrl-C."""

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import asyncpg
import httpx

from jobstream.cli._nats_security import nats_security_environment
from jobstream.cli._settings import remove_stack_file, write_stack_file
from jobstream.events import NO_SECURITY, ConnectError, JobstreamError, NatsSecurity
from jobstream.services.stack import NatsServer, PostgresServer, stop_processes

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "jobstream"
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
STOP_TIMEOUT_S = 15.0
API_START_TIMEOUT_S = 60.0


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(kw_only=True)
class StackOptions:
    data_dir: Path
    nats_url: str | None = None
    database_url: str | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    workers: int = 1
    projectors: int = 1
    concurrency: int = 8
    lease_s: float = 30.0
    queue: str = "default"
    worker_args: list[str] = field(default_factory=list)
    log_level: str = "INFO"
    nats_security: NatsSecurity = NO_SECURITY


@dataclass
class _Child:
    name: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0


class LocalStack:
    """Start servers and processes on enter; stop everything, in order, on exit."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.nats_server: NatsServer | None = None
        self.postgres_server: PostgresServer | None = None
        self.nats_url = options.nats_url or ""
        self.database_url = options.database_url or ""
        self.api_url = ""
        self._children: list[_Child] = []
        self._supervisor: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "LocalStack":
        try:
            self._start_servers()
            await self._ensure_database()
            self._start_children()
            await self._wait_for_api()
        except BaseException:
            await asyncio.to_thread(self.stop)
            raise
        self._supervisor = asyncio.create_task(self._supervise())
        return self

    async def _wait_for_api(self) -> None:
        """Return once the API answers, so callers can use every process at once."""
        deadline = asyncio.get_running_loop().time() + API_START_TIMEOUT_S
        async with httpx.AsyncClient(base_url=self.api_url, timeout=1) as client:
            while asyncio.get_running_loop().time() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise JobstreamError(f"the API did not answer at {self.api_url} in {API_START_TIMEOUT_S}s")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await asyncio.to_thread(self.stop)

    # --- servers -----------------------------------------------------------

    def _start_servers(self) -> None:
        data_dir = self.options.data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        if not self.nats_url:
            port = 4222 if port_is_free(4222) else 0
            self.nats_server = NatsServer(data_dir / "nats", port=port).start()
            self.nats_url = self.nats_server.url
            log.info("embedded nats-server at %s", self.nats_url)
        if not self.database_url:
            port = 5432 if port_is_free(5432) else 0
            self.postgres_server = PostgresServer(data_dir / "postgres" / "data", port=port).start()
            self.database_url = self.postgres_server.url_for(EMBEDDED_DATABASE)
            log.info("embedded PostgreSQL at %s", self.database_url)
        port = self.options.api_port
        if port and not port_is_free(port, self.options.api_host):
            raise JobstreamError(
                f"API port {self.options.api_host}:{port} is taken; choose another with --api-port"
            )
        self.api_url = f"http://{self.options.api_host}:{port}"

    async def _ensure_database(self) -> None:
        if self.postgres_server is None:
            return
        admin_url = self.postgres_server.url
        try:
            conn = await asyncpg.connect(admin_url, timeout=10)
        except (OSError, asyncpg.PostgresError) as exc:
            raise ConnectError("PostgreSQL", admin_url, str(exc)) from exc
        try:
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", EMBEDDED_DATABASE
            )
            if not exists:
                await conn.execute(f'CREATE DATABASE "{EMBEDDED_DATABASE}"')
        finally:
            await conn.close()

    # --- processes ---------------------------------------------------------

    def _base_args(self) -> list[str]:
        return [
            "--nats-url",
            self.nats_url,
            "--database-url",
            self.database_url,
            "--data-dir",
            str(self.options.data_dir.resolve()),
        ]

    def _start_children(self) -> None:
        jobstream = [sys.executable, "-m", "jobstream.cli"]
        base = self._base_args()
        options = self.options
        self._children = [
            _Child(
                "dispatcher", [*jobstream, "dispatcher", *base, "--lease-s", str(options.lease_s)]
            ),
        ]
        count = options.projectors
        for index in range(count):
            self._children.append(
                _Child(
                    "projector" if count == 1 else f"projector-{index}",
                    [
                        *jobstream,
                        "projector",
                        *base,
                        "--partitions",
                        str(count),
                        "--partition",
                        str(index),
                    ],
                )
            )
        for index in range(options.workers):
            self._children.append(
                _Child(
                    f"worker-{index + 1}",
                    [
                        *jobstream,
                        "worker",
                        *base,
                        "--queue",
                        options.queue,
                        "--concurrency",
                        str(options.concurrency),
                        "--lease-s",
                        str(options.lease_s),
                        *options.worker_args,
                    ],
                )
            )
        api = [
            *jobstream,
            "api",
            *base,
            "--host",
            options.api_host,
            "--port",
            str(options.api_port),
        ]
        self._children.append(_Child("api", api))
        for child in self._children:
            self._spawn(child)
        write_stack_file(
            options.data_dir,
            nats_url=self.nats_url,
            database_url=self.database_url,
            api_url=self.api_url,
        )

    def _spawn(self, child: _Child) -> None:
        # A session of its own: Ctrl-C reaches only this supervisor, which stops children in order.
        environment = {**os.environ, **nats_security_environment(self.options.nats_security)}
        child.process = subprocess.Popen(child.command, start_new_session=True, env=environment)
        log.info("started %s (pid %d)", child.name, child.process.pid)

    async def _supervise(self) -> None:
        """Restart a child that died, with backoff; a clean exit is left alone."""
        while True:
            await asyncio.sleep(0.5)
            for child in self._children:
                assert child.process is not None
                code = child.process.poll()
                if code is None or code == 0:
                    continue
                delay = RESTART_BACKOFF_S[min(child.restarts, len(RESTART_BACKOFF_S) - 1)]
                log.warning("%s exited with %d; restarting in %.1fs", child.name, code, delay)
                child.restarts += 1
                await asyncio.sleep(delay)
                self._spawn(child)

    def stop(self) -> None:
        """Workers first (they drain), then the rest, then the servers."""
        workers = [c for c in self._children if c.name.startswith("worker")]
        others = [c for c in self._children if not c.name.startswith("worker")]
        for group in (workers, others):
            processes = [child.process for child in group if child.process is not None]
            killed = stop_processes(processes, signum=signal.SIGTERM, timeout_s=STOP_TIMEOUT_S)
            for process in killed:
                log.warning("pid %d did not stop in %.0fs; killed", process.pid, STOP_TIMEOUT_S)
        self._children = []
        if self.postgres_server is not None:
            self.postgres_server.stop()
        if self.nats_server is not None:
            self.nats_server.stop()
        remove_stack_file(self.options.data_dir)
