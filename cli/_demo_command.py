"""`jobstream demo`: the stack started, sample jobs run, and a summary checked three ways."""

from typing import TYPE_CHECKING, Annotated

import typer

from jobstream.cli._nats_security import nats_security_options
from jobstream.cli._runtime import (
    bus_session,
    database_session,
    run,
    setup_logging,
    stop_on_signals,
)
from jobstream.cli._settings import (
    DEFAULT_DATA_DIR,
    DatabaseUrlOption,
    DataDirOption,
    NatsUrlOption,
    SchemaOption,
)
from jobstream.events import (
    NO_SECURITY,
    JobstreamError,
    NatsSecurity,
)
from jobstream.projections import DEFAULT_SCHEMA

if TYPE_CHECKING:
    from jobstream.cli._demo import DemoReport


@nats_security_options
def demo(
    nats_url: NatsUrlOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    workers: Annotated[int, typer.Option(min=1, max=16)] = 2,
    api_port: Annotated[int, typer.Option(envvar="JOBSTREAM_API_PORT", min=1, max=65535)] = 8000,
    timeout_s: Annotated[float, typer.Option(min=1, help="Give up after this long.")] = 120.0,
    serve: Annotated[bool, typer.Option("--serve", help="Keep the stack and API running.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    schema: SchemaOption = DEFAULT_SCHEMA,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Start the stack, run sample jobs (sums, sleeps, retries, failures) and summarise."""
    from jobstream.cli._demo import report_json, run_demo
    from jobstream.cli._stack import LocalStack, StackOptions

    setup_logging("WARNING" if as_json else "INFO")
    options = StackOptions(
        data_dir=data_dir,
        nats_url=nats_url,
        database_url=database_url,
        api_port=api_port,
        workers=workers,
        lease_s=10.0,
        worker_args=["--retry-base-s", "0.2", "--retry-cap-s", "2"],
        nats_security=nats_security,
    )

    async def main() -> int:
        stop = stop_on_signals()
        async with LocalStack(options) as stack:
            await _wait_for_read_models(stack.api_url)
            async with (
                bus_session([stack.nats_url], name="jobstream-demo", security=nats_security) as bus,
                database_session(stack.database_url, schema=schema, size=2) as pool,
            ):
                report = await run_demo(
                    bus,
                    pool,
                    api_url=stack.api_url,
                    results_dir=data_dir / "results",
                    timeout_s=timeout_s,
                )
            if as_json:
                typer.echo(report_json(report))
            else:
                _print_report(report)
            if serve:
                typer.echo(f"serving the API at {stack.api_url}; Ctrl-C stops everything")
                await stop.wait()
        return 0 if report.consistent else 1

    raise typer.Exit(run(main()))


async def _wait_for_read_models(api_url: str, timeout_s: float = 60.0) -> None:
    """Wait until the API can list jobs: the projector has created the read models."""
    import asyncio

    import httpx

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with httpx.AsyncClient(base_url=api_url, timeout=2) as client:
        while loop.time() < deadline:
            try:
                if (await client.get("/jobs", params={"limit": 1})).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise JobstreamError(f"the API at {api_url} did not become ready in {timeout_s:.0f}s")


def _print_report(report: "DemoReport") -> None:
    typer.echo("")
    typer.echo(f"{'job':<28} {'name':<10} {'status':<10} tasks")
    for job in report.jobs:
        counts = job["tasks"]
        typer.echo(
            f"{job['job_id']:<28} {job['name']:<10} {job['status']:<10} "
            f"{counts['succeeded']} succeeded, {counts['dead_lettered']} dead-lettered "
            f"of {counts['total']}"
        )
    typer.echo("")
    typer.echo(
        f"{report.tasks_submitted} tasks submitted, {report.tasks_succeeded} succeeded, "
        f"{report.tasks_failed_final} failed for good (dead-lettered) in {report.elapsed_s}s"
    )
    typer.echo(
        f"results table: {report.results_rows} rows; NDJSON: {report.ndjson_lines} lines; "
        f"API: {report.api_url}"
    )
    if report.consistent:
        typer.echo("API, read model and NDJSON files agree.")
    else:
        for mismatch in report.mismatches:
            typer.echo(f"MISMATCH: {mismatch}", err=True)
