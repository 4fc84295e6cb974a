"""Projectors that turn the event log into PostgreSQL read models and NDJSON files."""

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
