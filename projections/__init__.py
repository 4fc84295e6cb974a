"""Projectors that turn the event log into PostgreSQL read models and NDJSON files.

Names are imported on first use (PEP 562): a command that needs few of them starts fast."""

from typing import TYPE_CHECKING

from events import lazy_attribute

if TYPE_CHECKING:
    from projections._listing import TaskLister, unlisted_batches
    from projections._migrate import DEFAULT_SCHEMA, migrate, quote_ident
    from projections._ndjson import (
        NdjsonProjector,
        ResultLine,
        last_written_seq,
        partition_path,
        repair_partitions,
        result_line,
    )
    from projections._postgres import DEFAULT_NAME, PostgresProjector, caught_up, checkpoint
    from projections._queries import load_queries
    from projections._replay import (
        ReplayReport,
        replay_ndjson,
        replay_postgres,
        replay_stdout,
        swap_schemas,
    )

# Each public name and the module that defines it.
_HOMES: dict[str, str] = {
    "TaskLister": "projections._listing",
    "unlisted_batches": "projections._listing",
    "DEFAULT_SCHEMA": "projections._migrate",
    "migrate": "projections._migrate",
    "quote_ident": "projections._migrate",
    "NdjsonProjector": "projections._ndjson",
    "ResultLine": "projections._ndjson",
    "last_written_seq": "projections._ndjson",
    "partition_path": "projections._ndjson",
    "repair_partitions": "projections._ndjson",
    "result_line": "projections._ndjson",
    "DEFAULT_NAME": "projections._postgres",
    "PostgresProjector": "projections._postgres",
    "caught_up": "projections._postgres",
    "checkpoint": "projections._postgres",
    "load_queries": "projections._queries",
    "ReplayReport": "projections._replay",
    "replay_ndjson": "projections._replay",
    "replay_postgres": "projections._replay",
    "replay_stdout": "projections._replay",
    "swap_schemas": "projections._replay",
}


__getattr__ = lazy_attribute(__name__, _HOMES, globals())


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DEFAULT_NAME",
    "DEFAULT_SCHEMA",
    "NdjsonProjector",
    "PostgresProjector",
    "ReplayReport",
    "ResultLine",
    "TaskLister",
    "caught_up",
    "checkpoint",
    "last_written_seq",
    "load_queries",
    "migrate",
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
