"""Path and query parameters checked before any database or NATS call: ids and names follow
the log's own rule (`jobstream.events.check_name`), so a request can never build a bad subject."""

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import AfterValidator, BeforeValidator, StringConstraints

from jobstream.events import MAX_LENGTH, NAME_CHARSET, NAME_PATTERN, NameKind
from jobstream.services.api._errors import ErrorBody


def _rule(kind: NameKind) -> dict[str, Any]:
    limit = MAX_LENGTH[kind]
    return {
        "min_length": 1,
        "max_length": limit,
        "pattern": NAME_PATTERN,
        "description": f"{NAME_CHARSET}; at most {limit} characters",
    }


JobIdPath = Annotated[str, Path(**_rule(NameKind.JOB_ID))]
TaskIdPath = Annotated[str, Path(**_rule(NameKind.TASK_ID))]
WorkerIdPath = Annotated[str, Path(**_rule(NameKind.WORKER_ID))]
OptionalJobIdQuery = Annotated[str | None, Query(**_rule(NameKind.JOB_ID))]
OptionalQueueQuery = Annotated[str | None, Query(**_rule(NameKind.QUEUE))]

_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _iso_day(value: object) -> object:
    # Pydantic alone also reads "0" (a Unix time) and "2000-01-01T00:00:00" as days.
    if isinstance(value, str) and not _ISO_DAY.fullmatch(value):
        raise ValueError("must be a day as YYYY-MM-DD")
    return value


OptionalDayQuery = Annotated[
    date | None,
    BeforeValidator(_iso_day),
    Query(description="UTC day the task finished, YYYY-MM-DD"),
]


# Labels a job filter may ask for at once, and the length of one KEY=VALUE.
MAX_LABELS = 16
MAX_LABEL_LENGTH = 256

LabelQuery = Annotated[
    list[Annotated[str, StringConstraints(max_length=MAX_LABEL_LENGTH, pattern=r"^[^=]+=")]] | None,
    Query(
        max_length=MAX_LABELS,
        description="KEY=VALUE: only jobs with this label (repeat: jobs with all of them)",
    ),
]


def parse_label_query(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    return dict(pair.partition("=")[::2] for pair in pairs)


_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _rfc3339(value: object) -> object:
    # Pydantic alone also reads "0.5" (a Unix time) and times without an offset.
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError("must be a time as RFC 3339, e.g. 2026-12-02T10:00:00Z")
    return value


def _utc_moment(value: datetime) -> datetime:
    # One that leaves the calendar in UTC is refused.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("is out of range in UTC") from exc


SinceQuery = Annotated[
    datetime | None,
    BeforeValidator(_rfc3339),
    AfterValidator(lambda value: value and _utc_moment(value)),
    Query(description="only jobs submitted at or after this time (RFC 3339)"),
]
UntilQuery = Annotated[
    datetime | None,
    BeforeValidator(_rfc3339),
    AfterValidator(lambda value: value and _utc_moment(value)),
    Query(description="only jobs submitted before this time (RFC 3339)"),
]


# Every 503 says when to try again.
RETRY_AFTER: dict[str, Any] = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
}


def json_error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An error response in OpenAPI: JSON `ErrorBody`, whatever the route's own media type."""
    schema = {"$ref": "#/components/schemas/ErrorBody"}
    response = {"description": description, "content": {"application/json": {"schema": schema}}}
    return response | ({"headers": headers} if headers else {})


BAD_VALUE: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "A bad path or query value"},
}
READS: dict[int | str, dict[str, Any]] = {
    **BAD_VALUE,
    503: {
        "model": ErrorBody,
        "description": "The read-model database is unavailable or not migrated",
        "headers": RETRY_AFTER,
    },
}
LOG_READS: dict[int | str, dict[str, Any]] = {
    **BAD_VALUE,
    503: {
        "model": ErrorBody,
        "description": "The event log (NATS) is not reachable",
        "headers": RETRY_AFTER,
    },
}
