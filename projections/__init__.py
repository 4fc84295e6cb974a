"""Projectors that turn the event log into PostgreSQL read models and NDJSON files.

Names are imported on first use (PEP 562): a command that needs few of them starts fast."""

from typing import TYPE_CHECKING

from jobstream.events import lazy_attribute

if TYPE_CHECKING:
    from jobstream.projections._layout import LayoutMismatch
    from jobstream.projections._listing import TaskLister, unlisted_batches
    from jobstream.projections._migrate import DEFAULT_SCHEMA, migrate, quote_ident
    from jobstream.projections._ndjson import (
        NdjsonProjector,
        ResultLine,
        last_written_seq,
        partition_path,
        repair_partitions,
        result_line,
    )
    from jobstream.projections._partitions import Partition, partition_of
    from jobstream.projections._postgres import (
        DEFAULT_NAME,
        PostgresProjector,
        caught_up,
        checkpoint,
    )
    from jobstream.projections._queries import load_queries
    from jobstream.projections._replay import (
        ReplayReport,
        replay_ndjson,
        replay_postgres,
        replay_stdout,
        swap_schemas,
    )
    from jobstream.projections._replay_partitions import Connections

# Each public name and the module that defines it.
_HOMES: dict[str, str] = {
    "TaskLister": "jobstream.projections._listing",
    "unlisted_batches": "jobstream.projections._listing",
    "LayoutMismatch": "jobstream.projections._layout",
    "DEFAULT_SCHEMA": "jobstream.projections._migrate",
    "migrate": "jobstream.projections._migrate",
    "quote_ident": "jobstream.projections._migrate",
    "NdjsonProjector": "jobstream.projections._ndjson",
    "ResultLine": "jobstream.projections._ndjson",
    "last_written_seq": "jobstream.projections._ndjson",
    "partition_path": "jobstream.projections._ndjson",
    "repair_partitions": "jobstream.projections._ndjson",
    "result_line": "jobstream.projections._ndjson",
    "Partition": "jobstream.projections._partitions",
    "partition_of": "jobstream.projections._partitions",
    "DEFAULT_NAME": "jobstream.projections._postgres",
    "PostgresProjector": "jobstream.projections._postgres",
    "caught_up": "jobstream.projections._postgres",
    "checkpoint": "jobstream.projections._postgres",
    "load_queries": "jobstream.projections._queries",
    "ReplayReport": "jobstream.projections._replay",
    "Connections": "jobstream.projections._replay_partitions",
    "replay_ndjson": "jobstream.projections._replay",
    "replay_postgres": "jobstream.projections._replay",
    "replay_stdout": "jobstream.projections._replay",
    "swap_schemas": "jobstream.projections._replay",
}


__getattr__ = lazy_attribute(__name__, _HOMES, globals())


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Connections",
    "DEFAULT_NAME",
    "DEFAULT_SCHEMA",
    "LayoutMismatch",
    "NdjsonProjector",
    "Partition",
    "PostgresProjector",
    "ReplayReport",
    "ResultLine",
    "TaskLister",
    "caught_up",
    "checkpoint",
    "last_written_seq",
    "load_queries",
    "migrate",
    "partition_of",
    "partition_path",
    "quote_ident",
    "repair_partitions",
    "replay_ndjson",
    "replay_postgres",
    "replay_stdout",
    "result_line",
    "swap_schemas",
    "unlisted_batches",
]
