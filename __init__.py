"""jobstream: distributed job processing, event-sourced on NATS JetStream.

The names a handler is written against; everything else lives in the subpackages
(`jobstream.events`, `jobstream.services`, `jobstream.projections`, `jobstream.cli`).

    from jobstream import task_kind, Retry, PermanentError, TaskContext

The names load on first use (PEP 562), so `import jobstream` costs nothing until one is used.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobstream.services.worker import (
        Defer,
        PermanentError,
        Retry,
        TaskContext,
        task_kind,
    )

__all__ = ["Defer", "PermanentError", "Retry", "TaskContext", "task_kind"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'jobstream' has no attribute {name!r}")
    value = getattr(import_module("jobstream.services.worker"), name)
    globals()[name] = value
    return value
