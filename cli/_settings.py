"""Settings, read once at the edge: flags with JOBSTREAM_* fallbacks, plus the address file
that `jobstream up` leaves in the data dir so other commands find the embedded stack."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from jobstream.cli._runtime import usage_error
from jobstream.events import JobstreamError, NameKind, check_name

DEFAULT_DATA_DIR = Path(".jobstream")
STACK_FILE = "stack.json"


def checked(kind: NameKind) -> Callable[[str | None], str | None]:
    """A typer callback: the value if it is a valid `kind`, else a usage error (exit 2),
    before the command runs and so before any network call."""

    def callback(value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check_name(value, kind)
        except ValueError as exc:
            usage_error(str(exc))

    return callback


NatsUrlOption = Annotated[
    str | None,
    typer.Option(
        "--nats-url",
        envvar="JOBSTREAM_NATS_URL",
        help="NATS server URL(s), comma-separated for a cluster. "
        "Default: the embedded stack of the data dir.",
        show_envvar=True,
    ),
]
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="JOBSTREAM_DATABASE_URL",
        help="PostgreSQL URL. Default: the embedded stack of the data dir.",
        show_envvar=True,
    ),
]
DatabasePoolSizeOption = Annotated[
    int,
    typer.Option(
        "--database-pool-size",
        envvar="JOBSTREAM_DATABASE_POOL_SIZE",
        min=1,
        max=1000,
        help="Most PostgreSQL connections this process holds at once.",
        show_envvar=True,
    ),
]
DataDirOption = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="JOBSTREAM_DATA_DIR",
        help="Where the embedded servers, the NDJSON results and the stack file live.",
        show_envvar=True,
        file_okay=False,
    ),
]
LeaseOption = Annotated[
    float,
    typer.Option(
        "--lease-s",
        envvar="JOBSTREAM_LEASE_S",
        min=0.5,
        help="Task lease (the queue consumer's ack wait), in seconds.",
        show_envvar=True,
    ),
]
ConcurrencyOption = Annotated[
    int,
    typer.Option(
        "--concurrency",
        envvar="JOBSTREAM_CONCURRENCY",
        min=1,
        max=10_000,
        help="Tasks one worker runs at once.",
        show_envvar=True,
    ),
]
SchemaOption = Annotated[
    str,
    typer.Option(
        "--schema",
        envvar="JOBSTREAM_SCHEMA",
        help="PostgreSQL schema of the read models.",
        show_envvar=True,
    ),
]
QueueOption = Annotated[
    str,
    typer.Option(
        "--queue",
        envvar="JOBSTREAM_QUEUE",
        help="Queue name.",
        show_envvar=True,
        callback=checked(NameKind.QUEUE),
    ),
]


@dataclass(frozen=True, kw_only=True)
class Endpoints:
    nats_urls: list[str]
    database_url: str
    data_dir: Path

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"


def split_urls(value: str) -> list[str]:
    return [url.strip() for url in value.split(",") if url.strip()]


def read_stack_file(data_dir: Path) -> dict[str, str]:
    path = data_dir / STACK_FILE
    try:
        loaded: dict[str, str] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded


def write_stack_file(data_dir: Path, *, nats_url: str, database_url: str, api_url: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / STACK_FILE).write_text(
        json.dumps({"nats_url": nats_url, "database_url": database_url, "api_url": api_url})
    )


def remove_stack_file(data_dir: Path) -> None:
    (data_dir / STACK_FILE).unlink(missing_ok=True)


def resolve_endpoints(
    nats_url: str | None,
    database_url: str | None,
    data_dir: Path,
    *,
    need_database: bool = True,
    need_nats: bool = True,
) -> Endpoints:
    """Flags and environment first, then the running embedded stack of the data dir."""
    stack = read_stack_file(data_dir)
    nats = nats_url or stack.get("nats_url")
    database = database_url or stack.get("database_url")
    if need_nats and not nats:
        raise JobstreamError(
            "no NATS server: set --nats-url / JOBSTREAM_NATS_URL, or start `jobstream up`"
        )
    if need_database and not database:
        raise JobstreamError(
            "no PostgreSQL: set --database-url / JOBSTREAM_DATABASE_URL, or start `jobstream up`"
        )
    return Endpoints(
        nats_urls=split_urls(nats or ""), database_url=database or "", data_dir=data_dir
    )


# The file name that means standard input (`--tasks-file -`, `--urls-file -`).
STDIN = "-"


DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_ATTEMPTS = 3
HandlerOption = Annotated[
    list[str] | None,
    typer.Option(
        "--handler",
        help="Extra task kind as name=package.module:function (repeatable).",
    ),
]
