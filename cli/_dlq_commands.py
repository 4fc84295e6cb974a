"""`jobstream dlq list` and `dlq retry`: dead-lettered tasks, and another round for them."""

import json
from typing import Annotated

import typer

from jobstream.cli._nats_security import nats_security_options
from jobstream.cli._runtime import (
    bus_session,
    database_session,
    run,
)
from jobstream.cli._settings import (
    DEFAULT_DATA_DIR,
    DatabaseUrlOption,
    DataDirOption,
    NatsUrlOption,
    SchemaOption,
    checked,
    resolve_endpoints,
)
from jobstream.events import (
    NO_SECURITY,
    NameKind,
    NatsSecurity,
)
from jobstream.projections import DEFAULT_SCHEMA

dlq_app = typer.Typer(help="Dead-lettered tasks: list them, give them another round.")


@dlq_app.command("list")
def dlq_list(
    job_id: Annotated[
        str | None,
        typer.Option("--job", help="Only this job's tasks.", callback=checked(NameKind.JOB_ID)),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    schema: SchemaOption = DEFAULT_SCHEMA,
) -> None:
    """List dead-lettered tasks, the latest first (from the read model)."""
    from jobstream.cli._dlq import list_dead_letters

    endpoints = resolve_endpoints(None, database_url, data_dir, need_nats=False)

    async def main() -> list[dict[str, object]]:
        async with (
            database_session(endpoints.database_url, schema=schema) as pool,
            pool.acquire() as conn,
        ):
            return await list_dead_letters(conn, job_id=job_id, limit=limit)

    rows = run(main())
    for row in rows:
        if as_json:
            typer.echo(json.dumps(row))
        else:
            typer.echo(
                f"{row['task_id']}  {row['kind']}  attempts {row['attempts']}  {row['error']}"
            )
    if not rows and not as_json:
        typer.echo("no dead-lettered tasks")


@dlq_app.command("retry")
@nats_security_options
def dlq_retry(
    target: Annotated[
        str | None,
        # A task id's rule admits every job id.
        typer.Argument(help="A job id or a task id.", callback=checked(NameKind.TASK_ID)),
    ] = None,
    retry_all: Annotated[bool, typer.Option("--all", help="Every dead-lettered task.")] = False,
    nats_url: NatsUrlOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    schema: SchemaOption = DEFAULT_SCHEMA,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Give dead-lettered tasks another round of attempts (their job re-opens)."""
    from jobstream.cli._dlq import RetryOutcome, retry_dead_letters

    endpoints = resolve_endpoints(nats_url, database_url, data_dir)

    async def main() -> RetryOutcome:
        async with (
            bus_session(endpoints.nats_urls, name="jobstream-dlq", security=nats_security) as bus,
            database_session(endpoints.database_url, schema=schema) as pool,
            pool.acquire() as conn,
        ):
            return await retry_dead_letters(bus, conn, target=target, retry_all=retry_all)

    outcome = run(main())
    for task_id, reason in outcome.skipped.items():
        typer.echo(f"skipped {task_id}: {reason}", err=True)
    typer.echo(f"requeued {len(outcome.requeued)} task(s)")
