"""The options every read command shares (where the read models and NATS are), added as one
set and handed to the command as one `ReadModels`, which runs a read on a read-model
connection with the tasks in flight that the workers' liveness records show."""

import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from jobstream.cli._nats_security import nats_security_options
from jobstream.cli._runtime import connect_bus, database_session, run
from jobstream.cli._settings import (
    DEFAULT_DATA_DIR,
    DatabaseUrlOption,
    DataDirOption,
    NatsUrlOption,
    SchemaOption,
    resolve_endpoints,
)
from jobstream.events import NO_SECURITY, ConnectError, NatsSecurity
from jobstream.projections import DEFAULT_SCHEMA

if TYPE_CHECKING:
    import asyncpg

    from jobstream.services.api import LiveWork

T = TypeVar("T")
R = TypeVar("R")

# The command's parameter that receives the options.
TARGET = "read_models"
# Parameter name -> (its option, its default).
_OPTIONS: dict[str, tuple[Any, Any]] = {
    "nats_url": (NatsUrlOption, None),
    "database_url": (DatabaseUrlOption, None),
    "data_dir": (DataDirOption, DEFAULT_DATA_DIR),
    "schema": (SchemaOption, DEFAULT_SCHEMA),
}
LIVENESS_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ReadModels:
    nats_url: str | None = None
    database_url: str | None = None
    data_dir: Path = DEFAULT_DATA_DIR
    schema: str = DEFAULT_SCHEMA
    security: NatsSecurity = NO_SECURITY

    def read(self, read: Callable[["asyncpg.Connection", "LiveWork"], Awaitable[T]]) -> T:
        """`read` on a read-model connection, with the tasks in flight; a note on stderr if
        those could not be read (the read model alone answered then)."""
        from jobstream.services.api import LiveWork, init_connection

        endpoints = resolve_endpoints(
            self.nats_url, self.database_url, self.data_dir, need_nats=False
        )

        async def main() -> tuple[T, str]:
            live, note = await live_work_once(endpoints.nats_urls, self.security)
            async with (
                database_session(
                    endpoints.database_url, schema=self.schema, init=init_connection
                ) as pool,
                pool.acquire() as conn,
            ):
                return await read(conn, live or LiveWork()), note

        value, note = run(main())
        if note and value is not None:  # a note qualifies an answer; "not found" needs none
            typer.echo(note, err=True)
        return value


async def live_work_once(
    nats_urls: list[str], nats_security: NatsSecurity
) -> tuple["LiveWork | None", str]:
    """The workers' liveness records read once, and a note for the user when they cannot be
    (the counts then come from the read model alone)."""
    import asyncio

    from jobstream.services.api import live_work, read_liveness

    if not nats_urls:
        return None, "note: no NATS URL; counts are the read model's alone"
    try:
        bus = await asyncio.wait_for(
            connect_bus(nats_urls, name="jobstream-read", security=nats_security),
            LIVENESS_TIMEOUT_S,
        )
    except (TimeoutError, ConnectError):
        return (
            None,
            "note: NATS unreachable; counts are the read model's (tasks in flight not shown)",
        )
    try:
        records = await asyncio.wait_for(read_liveness(bus), LIVENESS_TIMEOUT_S)
    except Exception as exc:  # the read model alone still answers
        return None, f"note: liveness records unreadable ({type(exc).__name__}); read model only"
    finally:
        await bus.close()
    return live_work(records, time.time()), ""


def read_model_options(command: Callable[..., R]) -> Callable[..., R]:
    """Give `command` the read-model and NATS flags (the NATS security set too) in place of
    its `read_models` parameter, which receives them as one `ReadModels`."""
    signature = inspect.signature(command)
    if TARGET not in signature.parameters:
        raise TypeError(f"{command.__name__} has no {TARGET} parameter")
    kept = [param for param in signature.parameters.values() if param.name != TARGET]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=option, default=default)
        for name, (option, default) in _OPTIONS.items()
    ]
    security = inspect.Parameter(
        "nats_security", inspect.Parameter.KEYWORD_ONLY, annotation=NatsSecurity, default=None
    )

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        kwargs[TARGET] = ReadModels(
            **{name: kwargs.pop(name) for name in _OPTIONS},
            security=kwargs.pop("nats_security"),
        )
        return command(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*kept, *added, security])  # type: ignore[attr-defined]
    return nats_security_options(wrapper)
