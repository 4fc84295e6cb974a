"""Path and query parameters checked before any database or NATS call: ids and names follow
the log's own rule (`events.check_name`), so a request can never build a bad subject."""

from typing import Annotated, Any

from fastapi import Path, Query

from events import MAX_LENGTH, NAME_CHARSET, NAME_PATTERN, NameKind
from services.api._errors import ErrorBody


def _rule(kind: NameKind) -> dict[str, Any]:
    limit = MAX_LENGTH[kind]
    return {
        "min_length": 1,
        "max_length": limit,
        "pattern": NAME_PATTERN,
        "description": f"{NAME_CHARSET}; at most {limit} characters",
    }


JobIdPath = Annotated[str, Path(**_rule(NameKind.JOB_ID))]
OptionalJobIdQuery = Annotated[str | None, Query(**_rule(NameKind.JOB_ID))]
OptionalQueueQuery = Annotated[str | None, Query(**_rule(NameKind.QUEUE))]


def json_error(description: str) -> dict[str, Any]:
    """An error response in OpenAPI: JSON `ErrorBody`, whatever the route's own media type."""
    schema = {"$ref": "#/components/schemas/ErrorBody"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


READS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "A bad path or query value"},
    503: {"model": ErrorBody, "description": "The database is unavailable or not migrated"},
}
