"""Partitions of the Postgres projection: which projector process applies which event.

A projection may run as N processes (on any hosts), partition 0..N-1, that share the work by
job: partition `partition_of(job_id, N)` applies every event of a job, its task events
included, and keeps its own checkpoint (`partition_checkpoint`), committed with its effects.
A worker's own events go to every partition: each keeps a row per worker (the `partition`
column), from those events and the task events of its jobs, and readers see them merged (the
`worker_summary` view). What no partition owns by job (a message on no job's subject) is
parked by partition 0.

How a partition gets its messages: the events stream stores each task event with its
job's bucket as a last token (`evt.task.<job>.<task>.<bucket>`, a subject transform of the
stream: `events.JOB_BUCKETS`), and partition i of N owns the buckets b with b mod N = i. Its
consumer filters on those buckets (`filter_subjects`), so nats-server sends it its task
events only, the bulk of the log, and none of the others': a partition's cost per event does
not grow with N. Job events (a few per job) and worker events come to every partition; of
job events, and of task events stored before the stream had its transform, each decodes only
its own (`wants`). Partition 0 also takes the messages on `evt.<x>` and `evt.task.<x>`
subjects, to park them. (A transform of the published subjects, or a partition token in
them, would change what integrators and the dispatcher subscribe to; a stream's transform
changes only what is stored.)

A partition's checkpoint moves past the others' events when its reader has nothing left to
read (`event_batches(watermarks=True)`), so "caught up" is every partition's checkpoint at
the log's end.

The hash is nats-server's `partition()`: 32-bit FNV-1a of the job id modulo 64 buckets,
then modulo N; `jobstream_partition` in sql/migrations/009_partitions.sql computes the same
in SQL (the lister's filter).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

from jobstream.events import (
    EVENT_SUBJECTS,
    JOB_BUCKETS,
    JOB_SUBJECT_PREFIX,
    MAX_PARTITIONS,
    POSTGRES_PROJECTION,
    TASK_SUBJECT_PREFIX,
    job_bucket,
    partition_checkpoint,
)

_WORKER_SUBJECT_PREFIX = "evt.worker."


def partition_of(job_id: str, count: int) -> int:
    """The partition of `count` that owns job `job_id`."""
    return 0 if count == 1 else job_bucket(job_id) % count


def job_of_event_subject(subject: str) -> str | None:
    """The job a job or task event subject names (`evt.job.<job>`, `evt.task.<job>.<task>`);
    None for any other subject."""
    if subject.startswith(JOB_SUBJECT_PREFIX):
        return subject[len(JOB_SUBJECT_PREFIX) :]
    if subject.startswith(TASK_SUBJECT_PREFIX):
        job_id, dot, _ = subject[len(TASK_SUBJECT_PREFIX) :].partition(".")
        return job_id if dot else None
    return None


def is_task_subject_of(subject: str, job_id: str, task_id: str) -> bool:
    """Whether `subject` is the task's, as published or as stored (with its job's bucket)."""
    own = f"{TASK_SUBJECT_PREFIX}{job_id}.{task_id}"
    # `events.stored_subject(own)`, without its parse of the subject: this runs for every
    # task event, and the parse costs 0.7 µs against 0.16.
    return subject == own or subject == f"{own}.{job_bucket(job_id)}"


def _in_wrong_bucket(subject: str, job_id: str) -> bool:
    """A stored task subject whose bucket is not its job's (a foreign client's)."""
    tokens = subject.split(".")
    return len(tokens) != 5 or tokens[4] != str(job_bucket(job_id))


def is_worker_subject(subject: str) -> bool:
    return subject.startswith(_WORKER_SUBJECT_PREFIX)


def parks(partition: int, subject: str) -> bool:
    """Whether partition `partition` parks a message on `subject` that cannot be projected: a
    worker subject's is parked once, by partition 0 (every partition reads them)."""
    return partition == 0 or not is_worker_subject(subject)


def worker_subject_of(worker_id: str) -> str:
    """`events.worker_subject` without its check of the name."""
    return _WORKER_SUBJECT_PREFIX + worker_id


class ReadingOptions(TypedDict):
    filter_subject: str | list[str]
    wants: Callable[[str], bool] | None
    watermarks: bool


@dataclass(frozen=True, slots=True)
class Partition:
    """Partition `index` of `count`."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.count <= min(MAX_PARTITIONS, JOB_BUCKETS):
            raise ValueError(f"partitions: {self.count} is not in 1..{MAX_PARTITIONS}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"partition {self.index} of {self.count}: not in 0..{self.count - 1}")

    def __str__(self) -> str:
        return f"partition {self.index} of {self.count}"

    def checkpoint_name(self, projection: str = POSTGRES_PROJECTION) -> str:
        return partition_checkpoint(projection, self.index, self.count)

    def owns_job(self, job_id: str) -> bool:
        return partition_of(job_id, self.count) == self.index

    def wants(self, subject: str) -> bool:
        """Whether this partition applies the message on `subject`: its jobs' events, every
        worker event, and (partition 0) what no job owns."""
        if self.count == 1:
            return True
        job_id = job_of_event_subject(subject)
        if job_id is None:
            return self.index == 0 or is_worker_subject(subject)
        if subject.count(".") >= 4 and _in_wrong_bucket(subject, job_id):
            return True  # delivered here by its bucket token; parked by `check_subject`
        return self.owns_job(job_id)

    def filter_subjects(self) -> list[str]:
        """What this partition's consumer reads (see the module's docstring)."""
        if self.count == 1:
            return [EVENT_SUBJECTS]
        buckets = range(self.index, JOB_BUCKETS, self.count)
        subjects = [f"{TASK_SUBJECT_PREFIX}*.*.{bucket}" for bucket in buckets]
        subjects += [f"{TASK_SUBJECT_PREFIX}*.*", f"{JOB_SUBJECT_PREFIX}*"]
        subjects.append(f"{_WORKER_SUBJECT_PREFIX}*")
        if self.index == 0:
            subjects += ["evt.*", f"{TASK_SUBJECT_PREFIX}*"]
        return subjects

    def reading(self) -> ReadingOptions:
        """The arguments of `events.event_batches` that read this partition's part of the
        log."""
        if self.count == 1:
            return ReadingOptions(filter_subject=EVENT_SUBJECTS, wants=None, watermarks=False)
        return ReadingOptions(
            filter_subject=self.filter_subjects(), wants=self.wants, watermarks=True
        )

    def parks(self, subject: str) -> bool:
        return parks(self.index, subject)


ONE_PARTITION = Partition()
