"""Task handlers: the built-ins and the registry that finds a user's own by name."""

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, TypeVar, runtime_checkable

from nats.js import JetStreamContext

from jobstream.events import MAX_PROGRESS_MESSAGE, JobstreamError

ENTRY_POINT_GROUP = "jobstream.handlers"
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclass(frozen=True, kw_only=True)
class TaskContext:
    job_id: str
    task_id: str
    attempt: int
    max_attempts: int
    worker_id: str
    # Times the task was put back for later by `Defer` (not attempts).
    deferrals: int = 0
    # Where `progress` reports go (the worker's sender); None: nowhere (a task of a chunk).
    report_progress: Callable[[float, str], None] | None = field(
        default=None, repr=False, compare=False
    )

    def progress(self, fraction: float, message: str = "") -> None:
        """Report how far the task has come: `fraction` in [0, 1], and an optional message
        (cut to MAX_PROGRESS_MESSAGE characters). Returns at once: at most one report per
        second is published, as a `task.progress` event; the latest wins, and one still
        waiting when the task ends is dropped. In chunked mode progress is per message and
        tasks of a chunk report nothing: the call is checked, then ignored."""
        if not 0.0 <= fraction <= 1.0:  # NaN too
            raise ValueError(f"progress fraction must be within [0, 1], got {fraction!r}")
        if self.report_progress is not None:
            self.report_progress(float(fraction), message[:MAX_PROGRESS_MESSAGE])


class Handler(Protocol):
    def __call__(self, args: Mapping[str, Any], ctx: TaskContext) -> Awaitable[Any]: ...


@runtime_checkable
class OpensWithWorker(Protocol):
    """A handler that holds something for the worker's lifetime (a connection pool, a KV
    bucket): opened when the worker starts, closed when it stops."""

    async def open(self, js: JetStreamContext, *, worker_id: str) -> None: ...

    async def close(self) -> None: ...


def task_kind(*, max_attempts: int) -> Callable[[F], F]:
    """Give a handler its kind's default attempt limit, used when a job sets none:

    @task_kind(max_attempts=10)
    async def warm(args, ctx): ...
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")

    def mark(handler: F) -> F:
        handler.max_attempts = max_attempts  # type: ignore[attr-defined]
        return handler

    return mark


class Retry(JobstreamError):
    """Raised by a handler to ask for another attempt after `delay_s` seconds."""

    def __init__(self, message: str = "retry requested", *, delay_s: float | None = None) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class Defer(JobstreamError):
    """Raised by a handler to put the task back, to run again after `delay_s` seconds,
    without counting an attempt (a domain that asks us to slow down, a rate limit's turn).

    The worker caps the deferrals of one task (`MAX_DEFERRALS`); past it, a `Defer` is a
    failed attempt. In a chunk, a `Defer` is a failed attempt: the task goes on alone."""

    def __init__(self, message: str = "deferred", *, delay_s: float) -> None:
        super().__init__(message)
        self.delay_s = max(0.0, delay_s)


class PermanentError(JobstreamError):
    """Raised by a handler for a failure that no retry can fix: the task is dead-lettered."""


class UnknownTaskKind(JobstreamError):
    def __init__(self, kind: str, known: list[str]) -> None:
        super().__init__(f"unknown task kind {kind!r}; known kinds: {', '.join(sorted(known))}")
        self.kind = kind


def is_permanent(exc: Exception) -> bool:
    """A failure no retry can fix: the task is dead-lettered at once."""
    return isinstance(exc, PermanentError | UnknownTaskKind)


def failure_text(exc: BaseException) -> str:
    """The error recorded for a failed attempt: a handler's own `Retry` message as it wrote
    it (`HTTP 503 Service Unavailable for ...`), any other exception with its type's name."""
    if isinstance(exc, Retry) and str(exc):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _number(args: Mapping[str, Any], name: str) -> float:
    value = args.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PermanentError(f"argument {name!r} must be a number, got {value!r}")
    return value


async def sum_handler(args: Mapping[str, Any], ctx: TaskContext) -> dict[str, float]:
    """The original system's task: add `a` and `b`."""
    return {"sum": _number(args, "a") + _number(args, "b")}


async def noop_handler(args: Mapping[str, Any], ctx: TaskContext) -> None:
    return None


async def sleep_handler(args: Mapping[str, Any], ctx: TaskContext) -> dict[str, float]:
    seconds = _number(args, "seconds") if "seconds" in args else 0.5
    await asyncio.sleep(seconds)
    return {"slept_s": seconds}


async def fail_handler(args: Mapping[str, Any], ctx: TaskContext) -> dict[str, int]:
    """Fails, retryably, for tests and demos of the retry path: always, or until the attempt
    given as `succeed_on_attempt`."""
    succeed_on = args.get("succeed_on_attempt")
    if isinstance(succeed_on, int) and ctx.attempt >= succeed_on:
        return {"succeeded_on_attempt": ctx.attempt}
    raise RuntimeError(str(args.get("message", "failed on purpose")))


BUILTIN_HANDLERS: dict[str, Handler] = {
    "sum": sum_handler,
    "noop": noop_handler,
    "sleep": sleep_handler,
    "fail": fail_handler,
}


def load_handler(spec: str) -> tuple[str, Handler]:
    """Load `name=package.module:function` (or `package.module:function`, named after it)."""
    name, _, target = spec.rpartition("=")
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise JobstreamError(f"handler {spec!r}: expected [name=]package.module:function")
    try:
        handler = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise JobstreamError(f"handler {spec!r}: {exc}") from exc
    if not callable(handler):
        raise JobstreamError(f"handler {spec!r} is not callable")
    return (name or attribute), handler


class HandlerRegistry:
    """Handlers by task kind: the built-ins, the `jobstream.handlers` entry points, and any
    added by import path."""

    def __init__(self, handlers: Mapping[str, Handler] | None = None) -> None:
        self._handlers: dict[str, Handler] = (
            {**BUILTIN_HANDLERS, **_builtins_with_state()} if handlers is None else dict(handlers)
        )

    @classmethod
    def default(cls, extra_specs: list[str] | None = None) -> "HandlerRegistry":
        registry = cls()
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            registry.add(entry.name, entry.load())
        for spec in extra_specs or []:
            registry.add(*load_handler(spec))
        return registry

    def add(self, kind: str, handler: Callable[..., Awaitable[Any]]) -> None:
        self._handlers[kind] = handler

    def get(self, kind: str) -> Handler:
        try:
            return self._handlers[kind]
        except KeyError:
            raise UnknownTaskKind(kind, list(self._handlers)) from None

    def default_max_attempts(self, kind: str) -> int | None:
        """The kind's own attempt limit (set with `task_kind`), if it has one."""
        value = getattr(self._handlers.get(kind), "max_attempts", None)
        return value if isinstance(value, int) else None

    async def open(self, js: JetStreamContext, *, worker_id: str) -> None:
        for handler in self._handlers.values():
            if isinstance(handler, OpensWithWorker):
                await handler.open(js, worker_id=worker_id)

    async def close(self) -> None:
        for handler in self._handlers.values():
            if isinstance(handler, OpensWithWorker):
                await handler.close()

    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    def __contains__(self, kind: object) -> bool:
        return kind in self._handlers


def _builtins_with_state() -> dict[str, Handler]:
    """Built-ins that hold state per worker process: a new one for each registry."""
    from jobstream.services.worker.warm import WarmHandler

    return {"http.warm": WarmHandler()}
