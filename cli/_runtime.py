"""Running a process: the event loop, signals, logging, and the errors a user sees."""

import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

from jobstream.events import (
    NO_SECURITY,
    AuthenticationError,
    ConnectError,
    JobstreamError,
    NatsSecurity,
    TlsError,
    redact_url,
)

if TYPE_CHECKING:  # imported where used: a command's start-up (--help) needs none of them
    import asyncio

    import asyncpg

    from jobstream.events import Bus

T = TypeVar("T")

# Exit codes: a failure of the command, a wrong command line, a server not reached or
# refusing the credentials (say so in plain words, with the URL tried).
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("nats").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


class UsageError(JobstreamError):
    """What the user gave cannot be used (found only once the command ran: a bad line on
    stdin, say): exit 2, as for a wrong command line."""


class SourceFailed(JobstreamError):
    """The tasks' source broke off partway (a bad line on stdin, a site that stopped
    answering): a job half-sent from it is rejected, never left to run in part."""


def exit_code(exc: JobstreamError) -> int:
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    return EXIT_UNREACHABLE if isinstance(exc, ConnectError) else EXIT_FAILURE


def fail(exc: JobstreamError) -> NoReturn:
    """End the command with `exc` as one line on stderr and its exit code."""
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(exit_code(exc))


def usage_error(message: str) -> NoReturn:
    """End the command for a wrong command line: one line on stderr, exit 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


# asyncio logs this whenever a TLS peer closes a nats-py connection; it means nothing to
# a user, and it would come before the one line that says what went wrong.
_TLS_EOF_NOTICE = "returning true from eof_received() has no effect when using ssl"


def _not_tls_eof_notice(record: logging.LogRecord) -> bool:
    return record.getMessage() != _TLS_EOF_NOTICE


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop where available; a JobstreamError becomes one line and exit
    1 (3 when a server could not be reached or refused the credentials)."""
    import asyncpg
    import nats.errors

    asyncio_log = logging.getLogger("asyncio")
    if _not_tls_eof_notice not in asyncio_log.filters:
        asyncio_log.addFilter(_not_tls_eof_notice)
    try:
        return _run_on_best_loop(main)
    except JobstreamError as exc:
        fail(exc)
    except asyncpg.UndefinedTableError as exc:
        fail(
            JobstreamError(
                f"the read models are not in this database ({exc}): "
                "run `jobstream init` or start the projector, and check --schema"
            )
        )
    except nats.errors.ConnectionClosedError:
        # nats-py never reopens a connection the server closed: end, for the supervisor
        # (`jobstream up`, Kubernetes, systemd) to start the process again.
        typer.echo("error: the NATS server closed the connection; exiting", err=True)
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


# Allocations between two collections of the youngest generation (CPython's default: 700).
# The event processes allocate and free tasks, futures and events by the thousand each second;
# nearly all die by reference count long before 20,000 more are made, so a collection finds
# few to scan, where at 700 it scanned and promoted them again and again.
YOUNG_COLLECTION_THRESHOLD = 20_000


def tune_collector() -> None:
    """For a long-running event process: collect the youngest generation less often, and
    never scan what start-up made (`gc.freeze`: the imported modules, the settings)."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, oldest)


def _run_on_best_loop(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result


def stop_on_signals() -> "asyncio.Event":
    """An event set by SIGINT or SIGTERM: the process's cue to shut down gracefully."""
    import asyncio

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def connect_bus(urls: list[str], *, name: str, security: NatsSecurity = NO_SECURITY) -> "Bus":
    from jobstream.events import Bus

    return await Bus.connect(urls, name=name, security=security)


@asynccontextmanager
async def bus_session(
    urls: list[str], *, name: str, security: NatsSecurity = NO_SECURITY
) -> AsyncIterator["Bus"]:
    """A connected bus for the length of a command, closed however the command ends."""
    bus = await connect_bus(urls, name=name, security=security)
    try:
        yield bus
    finally:
        await bus.close()


async def check_nats_credentials(urls: list[str], security: NatsSecurity) -> None:
    """Raise if NATS refuses these credentials or certificates, for a process that would
    otherwise retry in the background (the API) or restart children forever (a worker
    supervisor); a server not reachable yet is left to those retries."""
    try:
        bus = await connect_bus(urls, name="jobstream-check", security=security)
    except (AuthenticationError, TlsError):
        raise
    except ConnectError:
        return
    await bus.close()


async def connect_database(url: str, **kwargs: Any) -> "asyncpg.Pool":
    import asyncpg

    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(url, timeout=10, **kwargs)
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        raise AuthenticationError("PostgreSQL", url, str(exc)) from exc
    except asyncpg.ClientConfigurationError as exc:
        # A URL option asyncpg cannot use (a wrong `sslmode`, a missing root certificate).
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"the PostgreSQL URL {redact_url(url)} cannot be used: {reason}") from exc
    except (TimeoutError, OSError, asyncpg.PostgresError, ValueError) as exc:
        raise ConnectError("PostgreSQL", url, str(exc) or type(exc).__name__) from exc
    return pool


@asynccontextmanager
async def database_session(
    url: str, *, schema: str | None = None, size: int = 1, **kwargs: Any
) -> AsyncIterator["asyncpg.Pool"]:
    """A connection pool for the length of a command (`schema` first on its search path),
    closed however the command ends."""
    if schema is not None:
        kwargs["server_settings"] = {"search_path": schema}
    pool = await connect_database(url, min_size=1, max_size=size, **kwargs)
    try:
        yield pool
    finally:
        await pool.close()


async def run_until_stopped(
    stop: "asyncio.Event", *runners: Callable[["asyncio.Event"], Coroutine[Any, Any, None]]
) -> None:
    """Run several loops until `stop`; if one fails, stop the others and re-raise."""
    import asyncio

    tasks = [asyncio.create_task(runner(stop)) for runner in runners]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                task.result()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
