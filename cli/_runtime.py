"""Running a process: the event loop, signals, logging, and the errors a user sees."""

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import asyncpg
import typer

from events import Bus, ConnectError, JobstreamError

T = TypeVar("T")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("nats").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop where available; a JobstreamError becomes one line and exit 1."""
    try:
        return _run_on_best_loop(main)
    except JobstreamError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _run_on_best_loop(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM: the process's cue to shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def connect_bus(urls: list[str], *, name: str) -> Bus:
    return await Bus.connect(urls, name=name)


async def connect_database(url: str, **kwargs: Any) -> asyncpg.Pool:
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(url, timeout=10, **kwargs)
    except (TimeoutError, OSError, asyncpg.PostgresError, ValueError) as exc:
        raise ConnectError("PostgreSQL", _redact(url), str(exc) or type(exc).__name__) from exc
    return pool


def _redact(url: str) -> str:
    """Hide a password in a URL shown to the user."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"


async def run_until_stopped(
    stop: asyncio.Event, *runners: Callable[[asyncio.Event], Coroutine[Any, Any, None]]
) -> None:
    """Run several loops until `stop`; if one fails, stop the others and re-raise."""
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
