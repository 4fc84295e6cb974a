"""The worker process and the handler API users write their own task kinds against."""

from jobstream.services.worker._handlers import (
    BUILTIN_HANDLERS,
    Defer,
    Handler,
    HandlerRegistry,
    PermanentError,
    Retry,
    TaskContext,
    UnknownTaskKind,
    load_handler,
    task_kind,
)
from jobstream.services.worker._worker import SimulatedFailure, Worker, WorkerOptions

__all__ = [
    "BUILTIN_HANDLERS",
    "Defer",
    "Handler",
    "HandlerRegistry",
    "PermanentError",
    "Retry",
    "SimulatedFailure",
    "TaskContext",
    "UnknownTaskKind",
    "Worker",
    "WorkerOptions",
    "load_handler",
    "task_kind",
]
