"""A worker's liveness record: the value of its key (the worker id) in the liveness bucket.

Not an event: the worker overwrites it about once a second and it never enters the log. The
dispatcher reads it to tell a lost worker; the API and `jobstream status` read it to show
the tasks in flight (a task that ends within the `task.started` tick is never in the log as
running) and when each worker was last seen.
"""

from typing import Annotated

import msgspec

from jobstream.events._catalogue import MAX_CHUNK_SIZE
from jobstream.events._codec import DecodeError
from jobstream.events._names import JobId, QueueName, TaskId

# A worker with a larger concurrency lists only this many of its messages (about 200 bytes
# each, so the value stays far below a stock server's 1 MB message limit); the others are
# not shown as running until their own events say so.
MAX_RUNNING = 1000
UnixTime = Annotated[float, msgspec.Meta(ge=0)]


class RunningTask(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One message a worker holds: a task, or a chunk (`task_id` is the chunk's id) of
    `tasks` tasks."""

    job_id: JobId
    task_id: TaskId
    tasks: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHUNK_SIZE)] = 1
    started_at: UnixTime


class Liveness(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """`at`: when the worker wrote the record (its clock, unix time). A record older than two
    of its leases is stale: the worker is gone or cut off."""

    at: UnixTime
    lease_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    queue: QueueName = "default"
    running: Annotated[list[RunningTask], msgspec.Meta(max_length=MAX_RUNNING)] = msgspec.field(
        default_factory=list
    )

    def is_fresh(self, now: float) -> bool:
        return now - self.at <= 2 * self.lease_s


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Liveness)


def encode_liveness(record: Liveness) -> bytes:
    return _encoder.encode(record)


def decode_liveness(data: bytes) -> Liveness:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise DecodeError(f"not a jobstream liveness record: {exc}") from exc
