"""What every writer of the read models shares about PostgreSQL: which errors pass, which
are the data's fault, and pooled connections that are dropped after a failure midway."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

RETRY_CAP_S = 5.0

# Errors caused by an event's values: the event is parked, the batch goes on.
DATA_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)
# Errors that pass: the same batch is tried again.
RETRY_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection left mid-reply by a lost server
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.TransactionRollbackError,
)


@asynccontextmanager
async def connection(
    pool: asyncpg.Pool, *, clean: tuple[type[Exception], ...] = DATA_ERRORS
) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection, closed rather than reused when an operation on it failed midway:
    after the server went away it may still be waiting for the end of a reply."""
    async with pool.acquire() as conn:
        try:
            yield conn
        except clean:  # answered in full and rolled back: reusable
            raise
        except BaseException:
            conn.terminate()
            raise
