"""`jobstream bench`: the benchmark, from the `jobstream[bench]` extra."""

from typing import Annotated

import typer

from jobstream.cli._runtime import (
    run,
    setup_logging,
    usage_error,
)
from jobstream.cli._settings import (
    DatabaseUrlOption,
    NatsUrlOption,
)
from jobstream.events import (
    JobstreamError,
)

# What the `jobstream[bench]` extra installs.
BENCH_EXTRA = ("psutil", "httptools")


def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="A short run (under a minute), for CI.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    tasks: Annotated[
        int | None,
        typer.Option(
            min=100,
            max=1_000_000,
            help="Tasks per throughput figure (default 20,000; 1,000 with --quick).",
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, max=16, help="Worker processes (the baselines' too).")
    ] = 2,
    concurrency: Annotated[
        int, typer.Option(min=1, max=1000, help="Tasks at once per jobstream worker process.")
    ] = 64,
    projectors: Annotated[
        int,
        typer.Option(
            min=1,
            max=16,
            help="PostgreSQL projector processes of the jobstream sections (partitions).",
        ),
    ] = 1,
    baseline_concurrency: Annotated[
        int, typer.Option(min=1, max=100, help="Loops per baseline worker process.")
    ] = 8,
    runs: Annotated[
        int, typer.Option(min=1, max=20, help="Runs, each on fresh servers; medians reported.")
    ] = 1,
    only: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated sections: throughput, chunked, latency, priority, "
            "one_big_job, crawl, recovery, replay, partitions, ceiling, baselines, api."
        ),
    ] = None,
    lease_s: Annotated[
        float | None,
        typer.Option(min=0.5, help="Workers' lease in seconds (default 5; 2 with --quick)."),
    ] = None,
    api_tasks: Annotated[
        int | None,
        typer.Option(
            min=1_000,
            max=10_000_000,
            help="Tasks of the big job in the api section's read models (default 1,000,000;"
            " 20,000 with --quick).",
        ),
    ] = None,
    nats_sync_always: Annotated[
        bool, typer.Option("--nats-sync-always", help="Embedded nats-server fsyncs every write.")
    ] = False,
    nats_url: NatsUrlOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Measure throughput, latency and recovery against baselines (the [bench] extra).

    Against JetStream's own ceiling and the two Postgres designs jobstream replaces, in one
    run (embedded servers unless URLs are given)."""
    from rich.console import Console

    try:
        from jobstream.bench import build_options, render, run_bench, stderr_progress, to_json
    except ModuleNotFoundError as exc:
        if exc.name not in BENCH_EXTRA:
            raise
        usage_error(f"jobstream bench needs {exc.name}: pip install 'jobstream[bench]'")

    try:
        options = build_options(
            quick=quick,
            tasks=tasks,
            workers=workers,
            concurrency=concurrency,
            projectors=projectors,
            baseline_concurrency=baseline_concurrency,
            runs=runs,
            only=only,
            lease_s=lease_s,
            nats_url=nats_url,
            database_url=database_url,
            nats_sync_always=nats_sync_always,
            api_tasks=api_tasks,
        )
    except JobstreamError as exc:
        usage_error(str(exc))
    setup_logging("WARNING")
    summary = run(run_bench(options, stderr_progress()))
    if as_json:
        typer.echo(to_json(summary))
    else:
        render(summary, Console())
