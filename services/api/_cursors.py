"""Keyset cursors, opaque to clients: urlsafe base64 of a tagged JSON array naming the last
row of a page."""

import base64
import binascii
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, TypeVar

import msgspec

_AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
_PgInteger = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
_Sequence = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class JobCursor(msgspec.Struct, frozen=True, array_like=True, tag="j"):
    submitted_at: _AwareDatetime
    job_id: str


class TaskCursor(msgspec.Struct, frozen=True, array_like=True, tag="t"):
    task_index: _PgInteger
    # A job's tasks are ordered by their index alone since it is their key (migration 015);
    # the id stays in the cursor so that cursors handed out before still read.
    task_id: str


class ResultCursor(msgspec.Struct, frozen=True, array_like=True, tag="r"):
    finished_at: _AwareDatetime
    task_id: str


class DeadLetterCursor(msgspec.Struct, frozen=True, array_like=True, tag="d"):
    finished_at: _AwareDatetime
    task_id: str


class EventCursor(msgspec.Struct, frozen=True, array_like=True, tag="e"):
    seq: _Sequence


C = TypeVar("C", JobCursor, TaskCursor, ResultCursor, DeadLetterCursor, EventCursor)
_encoder = msgspec.json.Encoder()


Cursor = JobCursor | TaskCursor | ResultCursor | DeadLetterCursor | EventCursor


def encode_cursor(cursor: Cursor) -> str:
    return base64.urlsafe_b64encode(_encoder.encode(cursor)).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str | None, kind: type[C]) -> C | None:
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
        return msgspec.json.decode(raw, type=kind)
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        # Imported here: the CLI's read commands encode cursors without the web stack.
        from jobstream.services.api._errors import bad_query

        message = "not a cursor of this listing; pass back the next_cursor it returned"
        raise bad_query("cursor", cursor, message) from exc


R = TypeVar("R")


def keyset_page(
    rows: Sequence[R], limit: int, cursor_of: Callable[[R], Cursor]
) -> tuple[Sequence[R], str | None]:
    """A page of `limit` rows from a query that fetched `limit + 1`, and the cursor of its last
    row when there is more."""
    page = rows[:limit]
    more = len(rows) > limit
    return page, encode_cursor(cursor_of(page[-1])) if more else None
