"""Names that become subject tokens, KV keys or message ids: one charset and a length bound each.

Any NATS client can write to the log, so these rules hold for events read back as much as for
what a user types. The bounds keep the longest subject (`evt.task.<job>.<task>`, under 300
bytes) far below nats-server's control-line limit (4 KB by default): a longer subject makes the
server close the publishing connection.
"""

import re
from enum import StrEnum
from typing import Annotated

import msgspec

NAME_CHARSET = "letters, digits, '_' and '-'"
_NAME_CHARS = "A-Za-z0-9_-"
# How much of a refused value an error message quotes.
QUOTE_CHARS = 40


class NameKind(StrEnum):
    QUEUE = "queue"
    JOB_ID = "job id"
    TASK_ID = "task id"
    WORKER_ID = "worker id"
    EVENT_ID = "event id"
    SCHEDULE = "schedule name"


MAX_LENGTH: dict[NameKind, int] = {
    NameKind.QUEUE: 64,
    NameKind.JOB_ID: 64,
    # A job's task ids are `<job id>-<index>`, its chunks' `<job id>-c<index>`.
    NameKind.TASK_ID: 96,
    NameKind.WORKER_ID: 128,
    # Derived event ids append a suffix to another id (`<chunk event id>-f<index>`).
    NameKind.EVENT_ID: 128,
    NameKind.SCHEDULE: 64,
}

# The rule as a regular expression, for checks outside this module (HTTP parameters).
NAME_PATTERN = f"^[{_NAME_CHARS}]+$"
_PATTERN = re.compile(f"[{_NAME_CHARS}]+")


def _meta(kind: NameKind, *, empty_ok: bool = False) -> msgspec.Meta:
    quantifier = "*" if empty_ok else "+"
    return msgspec.Meta(
        pattern=f"^[{_NAME_CHARS}]{quantifier}$",
        max_length=MAX_LENGTH[kind],
        description=f"{kind.value}: {NAME_CHARSET}, at most {MAX_LENGTH[kind]} characters",
    )


# Field types of events and task messages: decoding checks them, and the JSON Schema shows them.
QueueName = Annotated[str, _meta(NameKind.QUEUE)]
JobId = Annotated[str, _meta(NameKind.JOB_ID)]
TaskId = Annotated[str, _meta(NameKind.TASK_ID)]
WorkerId = Annotated[str, _meta(NameKind.WORKER_ID)]
WorkerIdOrEmpty = Annotated[str, _meta(NameKind.WORKER_ID, empty_ok=True)]
EventId = Annotated[str, _meta(NameKind.EVENT_ID)]
ScheduleName = Annotated[str, _meta(NameKind.SCHEDULE)]


class PriorityLevel(StrEnum):
    """The levels a queue's work is served in; a job's level follows from its priority.

    A level is a token of the task subject (`task.<queue>.<level>.<job_id>`), and each has its
    own consumer: a worker offers its free slots to the highest level first.
    """

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


LEVELS_HIGH_FIRST = (PriorityLevel.HIGH, PriorityLevel.NORMAL, PriorityLevel.LOW)


def level_of(priority: int) -> PriorityLevel:
    """A job's level: priority above 0 is high, 0 is normal, below 0 is low."""
    if priority > 0:
        return PriorityLevel.HIGH
    if priority < 0:
        return PriorityLevel.LOW
    return PriorityLevel.NORMAL


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """`value` for a message: repr'd, and cut to its first `limit` characters if longer."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value):,} characters)"


def check_name(value: object, kind: NameKind) -> str:
    """`value` if it is a valid `kind`, else `ValueError` naming the field and the limit."""
    limit = MAX_LENGTH[kind]
    if not isinstance(value, str):
        raise ValueError(f"{kind.value} must be a string, not {quote(value)}")
    if not value:
        raise ValueError(f"{kind.value} is empty; use {NAME_CHARSET}")
    if len(value) > limit:
        raise ValueError(f"{kind.value} {quote(value)} is too long: at most {limit} characters")
    if _PATTERN.fullmatch(value) is None:
        raise ValueError(f"{kind.value} {quote(value)} has characters outside {NAME_CHARSET}")
    return value


def safe_name(text: str, kind: NameKind) -> str:
    """`text` made into a valid `kind`: other characters become '-', cut to the bound."""
    cleaned = re.sub(f"[^{_NAME_CHARS}]", "-", text)[: MAX_LENGTH[kind]]
    return cleaned or "-"
