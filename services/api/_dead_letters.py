"""`GET /dead-letters`: tasks that ran out of attempts, the latest first, each with the CLI
command that gives it another round (the API itself never writes)."""

import shlex
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from jobstream.events import load_queries
from jobstream.services.api._cursors import DeadLetterCursor, decode_cursor, keyset_page
from jobstream.services.api._params import READS, OptionalJobIdQuery, OptionalQueueQuery

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
RETRY_COMMAND = "jobstream dlq retry"

_SQL = load_queries("jobstream.services.api", "ops.sql")


class DeadLetter(BaseModel):
    model_config = ConfigDict(frozen=True)

    task_id: str
    job_id: str
    kind: str
    # The job's queue (null if the read model does not have the job).
    queue: str | None
    attempts: int
    # The last attempt's error.
    error: str | None
    # When it was dead-lettered.
    finished_at: datetime
    # Run it to give the task another round of attempts (`jobstream dlq retry <task_id>`).
    retry_command: str


class DeadLetterPage(BaseModel):
    model_config = ConfigDict(frozen=True)

    dead_letters: list[DeadLetter]
    next_cursor: str | None = Field(description="pass back as `cursor` for the next page")


def retry_command(task_id: str) -> str:
    return f"{RETRY_COMMAND} {shlex.quote(task_id)}"


dead_letters_router = APIRouter()


@dead_letters_router.get("/dead-letters", responses=READS)
async def list_dead_letters(
    request: Request,
    queue: OptionalQueueQuery = None,
    job_id: OptionalJobIdQuery = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"rows per page, 1..{MAX_PAGE_SIZE}")
    ] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[
        str | None, Query(min_length=1, description="the next_cursor of the previous page")
    ] = None,
) -> DeadLetterPage:
    """Dead-lettered tasks, the latest first, with the command to retry each."""
    after = decode_cursor(cursor, DeadLetterCursor)
    async with request.app.state.read_models.connection() as conn:
        rows = await conn.fetch(
            _SQL["dead_letter_page"],
            queue,
            job_id,
            after.finished_at if after else None,
            after.task_id if after else None,
            limit + 1,
        )
    page, next_cursor = keyset_page(
        rows, limit, lambda last: DeadLetterCursor(last["finished_at"], last["task_id"])
    )
    return DeadLetterPage(
        dead_letters=[
            DeadLetter(**dict(row), retry_command=retry_command(row["task_id"])) for row in page
        ],
        next_cursor=next_cursor,
    )
