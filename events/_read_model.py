"""The read models' contract: what the projections write and the API and CLI read.

The schema's default name, the projection's name, the states a job, task, attempt or worker
can be in, and one Struct per table whose fields are the table's columns, in order. The
projections (`projections/_rules.py` holds the rules that fill the rows) and the readers
(`services/api`, `cli/_browse.py`) import these rather than spell them out; the tables
themselves are made by the migrations in `projections/sql/migrations/`.
"""

import math
from datetime import datetime
from typing import Literal, get_args

import msgspec

READ_MODEL_SCHEMA = "jobstream"
# The Postgres projection's name: its row in projection_checkpoints (one row per partition
# when it runs in several: `partition_checkpoint`).
POSTGRES_PROJECTION = "postgres"
# The most partitions a projection may be split into.
MAX_PARTITIONS = 64

# submitting: a streamed job whose tasks are still being added (it runs once sealed).
JobStatus = Literal[
    "submitting", "queued", "running", "completed", "failed", "cancelled", "rejected"
]
TaskState = Literal["queued", "running", "succeeded", "failed", "dead_lettered", "cancelled"]
AttemptOutcome = Literal["running", "succeeded", "failed"]
WorkerState = Literal["active", "stopped", "lost"]
ResultStatus = Literal["succeeded", "dead_lettered"]

JOB_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
TASK_STATES: tuple[TaskState, ...] = get_args(TaskState)
# A job or task in one of these never leaves it (a requeued dead letter is a new round).
TERMINAL_JOB_STATUSES: frozenset[JobStatus] = frozenset(
    {"completed", "failed", "cancelled", "rejected"}
)
TERMINAL_TASK_STATES: frozenset[TaskState] = frozenset({"succeeded", "dead_lettered", "cancelled"})

EMPTY_JSON = msgspec.Raw(b"{}")
# A jsonb column's SQL NULL. The read models never hold a JSON `null` apart from SQL NULL (a
# task's result of None is NULL), so `null` stands for it: rows read back as JSON (where the
# two look alike) keep their meaning, and JSON written as `null` is stored as NULL.
JSON_NULL = msgspec.Raw(b"null")


# --- the rows -------------------------------------------------------------------------------
# One Struct per table, its fields the table's columns in order. Rows are frozen: a rule
# returns a new row (`msgspec.structs.replace`). jsonb columns hold their JSON text
# (`msgspec.Raw`, NULL as `JSON_NULL`); crawl_stats rows are the crawl rule's own
# (projections/_crawl.py).


class JobRow(msgspec.Struct, frozen=True, kw_only=True):
    """A job. `tasks_<state>`: how many of its task rows are in each state, kept by the
    projector as it makes and changes them, so they are what `SELECT state, count(*) FROM
    tasks WHERE job_id = ... GROUP BY state` gives. A streamed job's tasks whose batch is
    taken (in `total_tasks`) but not listed yet have no rows: they are in no count, and the
    readers show them as queued (`total_tasks` less the counted)."""

    job_id: str
    name: str = ""
    queue: str = ""
    priority: int = 0
    status: JobStatus = "queued"
    total_tasks: int = 0
    max_attempts: int = 0
    timeout_s: float | None = None
    idempotency_key: str | None = None
    submitted_by: str = ""
    labels: msgspec.Raw = EMPTY_JSON
    submitted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    error: str | None = None
    submitted_seq: int
    updated_seq: int
    tasks_queued: int = 0
    tasks_running: int = 0
    tasks_succeeded: int = 0
    tasks_failed: int = 0
    tasks_dead_lettered: int = 0
    tasks_cancelled: int = 0


# The `jobs` column counting the job's task rows in each state.
TASK_COUNT_COLUMNS: dict[TaskState, str] = {state: f"tasks_{state}" for state in TASK_STATES}


class TaskRow(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    job_id: str
    task_index: int
    kind: str = ""
    args: msgspec.Raw = EMPTY_JSON
    state: TaskState = "queued"
    attempts: int = 0
    worker_id: str | None = None
    result: msgspec.Raw = JSON_NULL
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    updated_seq: int
    progress: float | None = None
    progress_message: str | None = None


class AttemptRow(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    attempt: int
    job_id: str
    worker_id: str
    outcome: AttemptOutcome
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None


class WorkerRow(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    host: str = ""
    pid: int = 0
    queues: list[str] = msgspec.field(default_factory=list)
    concurrency: int = 0
    version: str = ""
    state: WorkerState = "active"
    started_at: datetime | None = None
    last_seen_at: datetime | None = None
    stopped_at: datetime | None = None
    tasks_succeeded: int = 0
    tasks_failed: int = 0
    updated_seq: int
    # The projection partition that keeps this row: every partition keeps a row per worker,
    # from the worker's own events (which every partition reads) and the task events of its
    # jobs; readers see them merged (the `worker_summary` view).
    partition: int = 0


class ResultRow(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    job_id: str
    kind: str
    inputs: msgspec.Raw
    output: msgspec.Raw
    processed_by: str
    duration_s: float | None
    status: ResultStatus
    error: str | None
    attempts: int
    finished_at: datetime
    seq: int


class RejectedRow(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    subject: str
    error: str
    payload: bytes


class BatchRow(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    first_index: int
    task_count: int
    seq: int
    listed: bool


# The duration histogram of `stats_per_minute`: log-scale buckets growing by
# `BUCKET_GROWTH` (the crawl statistics' response times use the same), bucket i holding the
# durations of [g^i, g^(i+1)) ms, so its middle g^(i+0.5) is within 4.9% of each of them.
# Durations are taken within [MIN_BUCKET_MS, MAX_BUCKET_MS] (0 counts as 1 us).
BUCKET_GROWTH = 1.1
MIN_BUCKET_MS = 0.001
MAX_BUCKET_MS = 1e12


_LOG_GROWTH = math.log(BUCKET_GROWTH)


def duration_bucket(duration_s: float) -> int:
    """The histogram bucket of a duration (as `recount_read_model` in migration 008 has it)."""
    ms = duration_s * 1000
    if ms < MIN_BUCKET_MS:
        ms = MIN_BUCKET_MS
    elif ms > MAX_BUCKET_MS:
        ms = MAX_BUCKET_MS
    return math.floor(math.log(ms) / _LOG_GROWTH)


def bucket_middle_s(bucket: int) -> float:
    """The geometric middle of a histogram bucket, in seconds."""
    return float(BUCKET_GROWTH ** (bucket + 0.5)) / 1000


class MinuteStatsRow(msgspec.Struct, frozen=True, kw_only=True):
    """The `results` rows of one minute (of `finished_at`), queue (the job's; '' if the job
    was not known when its task finished) and kind, summed: those succeeded, those
    dead-lettered, and the succeeded ones' durations as a histogram {"<bucket>": tasks} (see
    `duration_bucket`; a NULL duration is in no bucket). `partition`: the projection's
    partition that writes the row (one writer per row); readers sum over partitions."""

    minute: datetime
    queue: str
    kind: str
    partition: int
    succeeded: int = 0
    failed: int = 0
    durations: dict[str, int] = msgspec.field(default_factory=dict)


class JobStatusCountRow(msgspec.Struct, frozen=True, kw_only=True):
    """How many jobs are in `status`, as far as partition `partition` counted them: the
    partition adds a job as its row is made in or moves into `status` and takes it off as it
    moves out, so a partition's count may be negative (a job counted by another means, e.g.
    the backfill of migration 010, into partition 0). Readers sum over partitions: that sum
    is what `SELECT count(*) FROM jobs WHERE status = ...` gives."""

    status: JobStatus
    partition: int
    jobs: int = 0


TableRow = (
    JobRow
    | TaskRow
    | AttemptRow
    | WorkerRow
    | ResultRow
    | RejectedRow
    | BatchRow
    | MinuteStatsRow
    | JobStatusCountRow
)

# The relations of the read models and their rows. `results` and `task_attempts` are views
# (of `tasks`, and of `attempt_rows` with `tasks`): the projectors write the tables.
TABLE_ROWS: dict[str, type[msgspec.Struct]] = {
    "jobs": JobRow,
    "tasks": TaskRow,
    "task_attempts": AttemptRow,
    "attempt_rows": AttemptRow,
    "workers": WorkerRow,
    "results": ResultRow,
    "rejected_events": RejectedRow,
    "job_batches": BatchRow,
    "stats_per_minute": MinuteStatsRow,
    "job_status_counts": JobStatusCountRow,
}

JSON_COLUMNS = frozenset(
    {
        "labels",
        "args",
        "result",
        "inputs",
        "output",
        "status_counts",
        "cache_counts",
        "response_ms",
        "durations",
    }
)


# --- partitions -------------------------------------------------------------------------------


def partition_checkpoint(projection: str, index: int, count: int) -> str:
    """The checkpoint row of partition `index` of `count`: the projection's own name when it
    runs in one."""
    return projection if count == 1 else f"{projection}/{index}-of-{count}"


def layout_of(name: str) -> tuple[str, int, int]:
    """(projection, index, count) of a checkpoint row's name."""
    projection, slash, part = name.partition("/")
    index, of, count = part.partition("-of-")
    if slash and of and index.isdigit() and count.isdigit():
        return projection, int(index), int(count)
    return name, 0, 1


def combined_checkpoints(rows: dict[str, int]) -> dict[str, int]:
    """Each projection's checkpoint from its checkpoint rows: a partitioned projection's is
    its slowest partition's (0 while one has not started). Of two layouts (a replay into
    another partition count is swapped in whole, so only by hand), the one that reached
    further counts."""
    by_layout: dict[tuple[str, int], dict[int, int]] = {}
    for name, last_seq in rows.items():
        projection, index, count = layout_of(name)
        by_layout.setdefault((projection, count), {})[index] = last_seq
    combined: dict[str, int] = {}
    for (projection, count), seqs in by_layout.items():
        slowest = min(seqs.get(index, 0) for index in range(count))
        combined[projection] = max(combined.get(projection, 0), slowest)
    return combined
