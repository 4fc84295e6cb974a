"""Partitions of the Postgres projection: which projector process applies which event.

A projection may run as N processes (on any hosts), partition 0..N-1, that share the work by
job: partition `partition_of(job_id, N)` applies every event of a job, its task events
included, and keeps its own checkpoint (`partition_checkpoint`), committed with its effects.
A worker's own events go to every partition: each keeps a row per worker (the `partition`
column), from those events and the task events of its jobs, and readers see them merged (the
`worker_summary` view). What no partition owns by job (a message on no job's subject) is
parked by partition 0.

Each partition reads the whole log and picks its messages by subject alone, decoding only
those (`wants`): the stream's subjects stay the ones integrators and the dispatcher use, and
every partition's checkpoint reaches the log's end, so "caught up" needs no knowledge of
which partition holds what. What that costs (each partition still receives every message)
is measured by `jobstream bench --only partitions`.

The hash is md5's first 4 bytes, big-endian, modulo N: `jobstream_partition` in
sql/migrations/009_partitions.sql computes the same in SQL (the lister's filter).
"""

import hashlib
from dataclasses import dataclass

from jobstream.events import (
    JOB_SUBJECT_PREFIX,
    MAX_PARTITIONS,
    POSTGRES_PROJECTION,
    partition_checkpoint,
)

_TASK_SUBJECT_PREFIX = "evt.task."
_WORKER_SUBJECT_PREFIX = "evt.worker."


def partition_of(job_id: str, count: int) -> int:
    """The partition of `count` that owns job `job_id`."""
    if count == 1:
        return 0
    digest = hashlib.md5(job_id.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") % count


def job_of_subject(subject: str) -> str | None:
    """The job a job or task event subject names (`evt.job.<job>`, `evt.task.<job>.<task>`);
    None for any other subject."""
    if subject.startswith(JOB_SUBJECT_PREFIX):
        return subject[len(JOB_SUBJECT_PREFIX) :]
    if subject.startswith(_TASK_SUBJECT_PREFIX):
        job_id, dot, _ = subject[len(_TASK_SUBJECT_PREFIX) :].partition(".")
        return job_id if dot else None
    return None


def is_worker_subject(subject: str) -> bool:
    return subject.startswith(_WORKER_SUBJECT_PREFIX)


def worker_subject_of(worker_id: str) -> str:
    """`events.worker_subject` without its check of the name."""
    return _WORKER_SUBJECT_PREFIX + worker_id


@dataclass(frozen=True, slots=True)
class Partition:
    """Partition `index` of `count`."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_PARTITIONS:
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
        job_id = job_of_subject(subject)
        if job_id is None:
            return self.index == 0 or is_worker_subject(subject)
        return self.owns_job(job_id)

    def parks(self, subject: str) -> bool:
        """Whether this partition parks a message on `subject` that cannot be projected: a
        worker subject's is parked once, by partition 0."""
        return self.index == 0 or not is_worker_subject(subject)


ONE_PARTITION = Partition()
