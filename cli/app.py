"""The `jobstream` command: its commands, grouped by theme in `--help`, each defined in a
module of its own (`_process_commands`, `_job_commands`, `_browse`, ...)."""

import sys
from typing import Annotated

import typer

from jobstream.cli._bench_command import bench
from jobstream.cli._browse import jobs, show, tasks, workers_app
from jobstream.cli._demo_command import demo
from jobstream.cli._dlq_commands import dlq_app
from jobstream.cli._events import events_app
from jobstream.cli._job_commands import cancel, submit, watch
from jobstream.cli._process_commands import (
    SCHEMA_HELP,
    api,
    dispatcher,
    init,
    projector,
    schema,
    up,
    worker,
)
from jobstream.cli._replay_command import replay
from jobstream.cli._runtime import exit_code
from jobstream.cli._schedule_commands import populate, schedule_app
from jobstream.cli._status_command import status
from jobstream.events import JobstreamError

app = typer.Typer(
    name="jobstream",
    help="Distributed jobs on NATS JetStream: submit, watch, and run every process.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # --install-completion / --show-completion for bash, zsh, fish and PowerShell.
    add_completion=True,
)


def _print_version(shown: bool) -> None:
    if shown:
        from importlib.metadata import version

        typer.echo(f"jobstream {version('jobstream')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Distributed jobs on NATS JetStream: submit, watch, and run every process."""


SETUP = "Set up"
PROCESSES = "Run the processes"
JOBS = "Jobs"
BROWSE = "Look around"
REPAIR = "Dead letters and replay"
TRY = "Try and measure"

app.command(rich_help_panel=SETUP)(init)
app.command(rich_help_panel=SETUP, help=SCHEMA_HELP)(schema)
for _process in (worker, dispatcher, projector, api, up):
    app.command(rich_help_panel=PROCESSES)(_process)
for _job_command in (submit, watch, cancel):
    app.command(rich_help_panel=JOBS)(_job_command)
app.add_typer(schedule_app, name="schedule", rich_help_panel=JOBS)
app.command(rich_help_panel=JOBS)(populate)
for _browse_command in (status, jobs, tasks, show):
    app.command(rich_help_panel=BROWSE)(_browse_command)
app.add_typer(workers_app, name="workers", rich_help_panel=BROWSE)
app.add_typer(events_app, name="events", rich_help_panel=BROWSE)
app.add_typer(dlq_app, name="dlq", rich_help_panel=REPAIR)
app.command(rich_help_panel=REPAIR)(replay)
app.command(rich_help_panel=TRY)(demo)
app.command(rich_help_panel=TRY)(bench)


def _register_crawl() -> None:
    from jobstream.cli.crawl import CRAWL_HELP, crawl

    app.command("crawl", help=CRAWL_HELP, rich_help_panel=JOBS)(crawl)


_register_crawl()


def main() -> None:
    try:
        app()
    except JobstreamError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exit_code(exc))
