"""Stream names, subjects and headers: the one place that spells them."""

import functools
from collections.abc import Sequence
from enum import StrEnum

from jobstream.events._catalogue import Event, is_job_event, is_worker_event
from jobstream.events._names import NameKind, PriorityLevel, check_name, quote

EVENTS_STREAM = "JOBSTREAM_EVENTS"
TASKS_STREAM = "JOBSTREAM_TASKS"
LIVENESS_BUCKET = "JOBSTREAM_LIVENESS"
DISPATCHER_BUCKET = "JOBSTREAM_DISPATCHER"
# Idempotency keys of submitted jobs (a hash of the key → the job id), kept forever.
IDEMPOTENCY_BUCKET = "JOBSTREAM_IDEMPOTENCY"
# Per-domain politeness of `http.warm` (rate, concurrency slots, slow-downs), fleet-wide.
DOMAINS_BUCKET = "JOBSTREAM_DOMAINS"

EVENT_SUBJECTS = "evt.>"
JOB_EVENT_SUBJECTS = "evt.job.>"
TASK_EVENT_SUBJECTS = "evt.task.>"
WORKER_EVENT_SUBJECTS = "evt.worker.>"

# The events stream stores a task event with one more token, its job's bucket:
# `evt.task.<job>.<task>.<bucket>` (published as `evt.task.<job>.<task>`; subscribers of core
# NATS see that). A bucket is FNV-1a of the job id modulo `JOB_BUCKETS` (`job_bucket`), as
# nats-server's `partition()` computes it, so a projection partition reads its jobs' task
# events through a filtered consumer (`projections/_partitions.py`).
JOB_BUCKETS = 64
TASK_SUBJECT_TRANSFORM_SOURCE = "evt.task.*.*"
TASK_SUBJECT_TRANSFORM_DESTINATION = (
    "evt.task.{{wildcard(1)}}.{{wildcard(2)}}.{{partition(" + str(JOB_BUCKETS) + ",1)}}"
)


@functools.lru_cache(maxsize=65_536)
def job_bucket(job_id: str) -> int:
    """The bucket of a job's stored task events: 32-bit FNV-1a of its id, modulo
    `JOB_BUCKETS`. Cached: the projector asks it of every task event, and a job has many."""
    digest = 0x811C9DC5
    for byte in job_id.encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return digest % JOB_BUCKETS


TASK_QUEUE_SUBJECTS = "task.>"


class Header(StrEnum):
    MSG_ID = "Nats-Msg-Id"
    EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
    # nats-server's message schedules (2.12+): set on a schedule message by its writer...
    SCHEDULE = "Nats-Schedule"
    SCHEDULE_TARGET = "Nats-Schedule-Target"
    # ... and on each message the server publishes for it (a tick).
    SCHEDULER = "Nats-Scheduler"
    SCHEDULE_NEXT = "Nats-Schedule-Next"


JOB_SUBJECT_PREFIX = "evt.job."
TASK_SUBJECT_PREFIX = "evt.task."


def job_subject(job_id: str) -> str:
    return f"{JOB_SUBJECT_PREFIX}{check_name(job_id, NameKind.JOB_ID)}"


def job_of_subject(subject: str) -> str | None:
    """The job id a job subject names; None for any other subject (or an invalid id)."""
    if not subject.startswith(JOB_SUBJECT_PREFIX):
        return None
    try:
        return check_name(subject.removeprefix(JOB_SUBJECT_PREFIX), NameKind.JOB_ID)
    except ValueError:
        return None


def task_event_subject(job_id: str, task_id: str) -> str:
    return f"evt.task.{check_name(job_id, NameKind.JOB_ID)}.{check_name(task_id, NameKind.TASK_ID)}"


def stored_subject(subject: str) -> str:
    """The subject the events stream stores a message of `subject` under: a task event's
    with its job's bucket (`TASK_SUBJECT_TRANSFORM_DESTINATION`), any other (a pattern
    too) as it is."""
    tokens = subject.split(".")
    if (
        len(tokens) == 4
        and tokens[0] == "evt"
        and tokens[1] == "task"
        and "*" not in tokens
        and ">" not in tokens
    ):
        return f"{subject}.{job_bucket(tokens[2])}"
    return subject


def stored_patterns(patterns: Sequence[str]) -> list[str]:
    """Filters that match in the events stream what `patterns` match as published: a task
    event's pattern (`evt.task.<job>.<task>`, either may be a `*`) also with any bucket after
    it, for the task events stored with their job's bucket. A filter another one covers is
    left out: nats-server refuses a consumer whose filters overlap."""
    expanded: list[str] = []
    for pattern in patterns:
        tokens = pattern.split(".")
        expanded.append(pattern)
        if len(tokens) == 4 and tokens[:2] == ["evt", "task"] and ">" not in tokens[2:]:
            expanded.append(f"{pattern}.*")
    kept: list[str] = []
    for pattern in expanded:
        if pattern in kept or any(o != pattern and _covers(o, pattern) for o in expanded):
            continue
        kept.append(pattern)
    return kept


def overlapping(patterns: Sequence[str]) -> tuple[str, str] | None:
    """Two of `patterns` that some subject matches both of, if any (nats-server refuses a
    consumer whose filters overlap)."""
    for index, first in enumerate(patterns):
        for second in patterns[index + 1 :]:
            if _overlap(first.split("."), second.split(".")):
                return first, second
    return None


def _overlap(one: list[str], other: list[str]) -> bool:
    for position, token in enumerate(one):
        if token == ">":
            return len(other) > position
        if position >= len(other):
            return False
        if other[position] == ">":
            return True
        if token != "*" and other[position] != "*" and token != other[position]:
            return False
    return len(one) == len(other)


def _covers(wider: str, narrower: str) -> bool:
    """Whether every subject NATS pattern `narrower` matches, `wider` matches too."""
    wide, narrow = wider.split("."), narrower.split(".")
    for position, token in enumerate(wide):
        if token == ">":
            return len(narrow) > position
        if position >= len(narrow) or narrow[position] == ">":
            return False
        if token != "*" and token != narrow[position]:
            return False
    return len(narrow) == len(wide)


def job_task_events_subject(job_id: str) -> str:
    """All task events of one job, as stored (with their bucket, or without it: stored
    before the stream had its subject transform)."""
    return f"evt.task.{check_name(job_id, NameKind.JOB_ID)}.>"


def worker_subject(worker_id: str) -> str:
    return f"evt.worker.{check_name(worker_id, NameKind.WORKER_ID)}"


def task_queue_subject(queue: str, job_id: str, *, level: PriorityLevel) -> str:
    queue, job_id = check_name(queue, NameKind.QUEUE), check_name(job_id, NameKind.JOB_ID)
    return f"task.{queue}.{level.value}.{job_id}"


# The token, in place of a level, of the subject a waiting task is queued on when its time
# comes (`task_due_subject`).
DUE_TOKEN = "due"


def task_due_subject(queue: str, job_id: str) -> str:
    """Where the server queues a waiting task when its time comes: a consumer of its own,
    served before the levels, as a redelivery is before new messages; from the end of a
    level's queue it would come back late, behind whatever was queued meanwhile."""
    queue, job_id = check_name(queue, NameKind.QUEUE), check_name(job_id, NameKind.JOB_ID)
    return f"task.{queue}.{DUE_TOKEN}.{job_id}"


def due_filter_subject(queue: str) -> str:
    return f"task.{check_name(queue, NameKind.QUEUE)}.{DUE_TOKEN}.*"


def due_consumer_name(queue: str) -> str:
    """The durable consumer of a queue's due tasks (`due-workers-…`, never a level's name)."""
    return f"{DUE_TOKEN}-workers-{check_name(queue, NameKind.QUEUE)}"


def task_schedule_subject(queue: str, job_id: str, task_id: str, *, level: PriorityLevel) -> str:
    """Where a task waits to be queued at a later time (on `task_due_subject`), as a message
    schedule. One token longer than any subject a queue's consumers take, so no worker is
    handed it; one per task, since the server keeps one schedule per subject (a newer one
    replaces it)."""
    queue_subject = task_queue_subject(queue, job_id, level=level)
    return f"{queue_subject}.{check_name(task_id, NameKind.TASK_ID)}"


def queue_subjects(queue: str) -> str:
    """Every task message of a queue, of any level (and of the form before levels)."""
    return f"task.{check_name(queue, NameKind.QUEUE)}.>"


def level_filter_subjects(queue: str, level: PriorityLevel) -> list[str]:
    """What the consumer of one level of a queue takes. The normal level also takes messages
    queued before there were levels (`task.<queue>.<job_id>`, one token shorter), so an
    upgrade strands none of them."""
    queue = check_name(queue, NameKind.QUEUE)
    subjects = [f"task.{queue}.{level.value}.*"]
    if level is PriorityLevel.NORMAL:
        subjects.append(f"task.{queue}.*")
    return subjects


def job_queue_purge_subjects(job_id: str) -> tuple[str, str, str]:
    """A job's queued task messages, of every level (and due), and of the form before levels;
    and its tasks waiting to be queued (`task_schedule_subject`)."""
    job_id = check_name(job_id, NameKind.JOB_ID)
    return f"task.*.*.{job_id}", f"task.*.{job_id}", f"task.*.*.{job_id}.*"


def worker_consumer_name(queue: str, level: PriorityLevel = PriorityLevel.NORMAL) -> str:
    """The durable consumer of one level of a queue. The normal level keeps the name the
    queue's one consumer had before levels; the prefix of the others (`high-workers-…`) can
    never be a `workers-<queue>` name, whatever the queue is called."""
    queue = check_name(queue, NameKind.QUEUE)
    if level is PriorityLevel.NORMAL:
        return f"workers-{queue}"
    return f"{level.value}-workers-{queue}"


def subject_for(event: Event) -> str:
    """The subject an event is published on: one subject per job, per task, per worker."""
    # By type, not `isinstance`: this runs for every event published and acted on.
    if is_job_event(event):
        return job_subject(event.job_id)
    if is_worker_event(event):
        return worker_subject(event.worker_id)
    return task_event_subject(event.job_id, event.task_id)


# --- schedules -------------------------------------------------------------------------

# A schedule is one message on `sched.def.<name>`; the server publishes its ticks on
# `sched.tick.<name>`, in the same stream.
SCHEDULES_STREAM = "JOBSTREAM_SCHEDULES"
SCHEDULE_SUBJECTS = "sched.>"
SCHEDULE_DEFINITION_SUBJECTS = "sched.def.>"
SCHEDULE_TICK_SUBJECTS = "sched.tick.>"
_SCHEDULE_DEFINITION_PREFIX = "sched.def."
_SCHEDULE_TICK_PREFIX = "sched.tick."
# The durable consumer of the ticks, shared by every dispatcher: each tick goes to one.
SCHEDULE_TICKS_CONSUMER = "dispatchers-schedule-ticks"


def schedule_subject(name: str) -> str:
    return f"{_SCHEDULE_DEFINITION_PREFIX}{check_name(name, NameKind.SCHEDULE)}"


def schedule_tick_subject(name: str) -> str:
    return f"{_SCHEDULE_TICK_PREFIX}{check_name(name, NameKind.SCHEDULE)}"


def schedule_of_subject(subject: str) -> str:
    """The schedule a definition or tick subject names; `ValueError` for any other subject
    (or an invalid name)."""
    for prefix in (_SCHEDULE_DEFINITION_PREFIX, _SCHEDULE_TICK_PREFIX):
        if subject.startswith(prefix):
            return check_name(subject.removeprefix(prefix), NameKind.SCHEDULE)
    raise ValueError(f"{quote(subject)} is not a schedule subject")
