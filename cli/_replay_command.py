"""`jobstream replay`: the read models or the NDJSON files rebuilt from the log, or the log
printed as NDJSON."""

import sys
from contextlib import AsyncExitStack
from datetime import UTC, datetime
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
    MAX_PARTITIONS,
    NO_SECURITY,
    NameKind,
    NatsSecurity,
)
from jobstream.projections import DEFAULT_SCHEMA


@nats_security_options
def replay(
    target: Annotated[
        str, typer.Option(help="postgres (rebuild and swap), ndjson (rewrite files) or stdout.")
    ] = "stdout",
    from_seq: Annotated[int, typer.Option(min=1, help="Start at this log sequence.")] = 1,
    since: Annotated[
        datetime | None, typer.Option(help="Start at the first event at or after this time (UTC).")
    ] = None,
    job_id: Annotated[
        str | None,
        typer.Option("--job", help="stdout: one job's history.", callback=checked(NameKind.JOB_ID)),
    ] = None,
    nats_url: NatsUrlOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    schema: SchemaOption = DEFAULT_SCHEMA,
    partitions: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_PARTITIONS,
            help="postgres: build the read models for this many projector partitions, folding"
            " the log in as many processes (then run the projectors with --partitions N).",
        ),
    ] = 1,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Rebuild the read models or the NDJSON files from the log, or print the log as NDJSON."""
    from jobstream.cli._replay import TARGETS, seq_since
    from jobstream.cli._replay import replay as run_replay
    from jobstream.projections import Connections

    if target not in TARGETS:
        raise typer.BadParameter(f"--target takes one of {', '.join(TARGETS)}")
    if partitions > 1 and target != "postgres":
        raise typer.BadParameter("--partitions goes with --target postgres only")
    endpoints = resolve_endpoints(
        nats_url, database_url, data_dir, need_database=target == "postgres"
    )

    async def main() -> str:
        async with AsyncExitStack() as sessions:
            bus = await sessions.enter_async_context(
                bus_session(endpoints.nats_urls, name="jobstream-replay", security=nats_security)
            )
            start = (
                await seq_since(bus, since.replace(tzinfo=since.tzinfo or UTC))
                if since
                else from_seq
            )
            pool = None
            if target == "postgres":
                pool = await sessions.enter_async_context(
                    database_session(endpoints.database_url, size=4)
                )
            report = await run_replay(
                bus,
                pool,
                target=target,
                from_seq=start,
                job_id=job_id,
                schema=schema,
                results_dir=endpoints.results_dir,
                show_progress=sys.stderr.isatty(),
                partitions=partitions,
                connections=Connections(endpoints.nats_urls, endpoints.database_url, nats_security),
            )
        return (
            f"replayed {report.events} events (seq {report.first_seq}..{report.last_seq}) "
            f"into {target} in {report.seconds:.2f}s: {report.events_per_s:,.0f} events/s"
        )

    summary = run(main())
    typer.echo(summary, err=True)
