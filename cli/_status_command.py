"""`jobstream status`: one job's counts and its running tasks' progress."""

import json
from typing import TYPE_CHECKING, Annotated

import typer

from jobstream.cli._browse import READ_MODELS
from jobstream.cli._read_models import ReadModels, read_model_options
from jobstream.cli._settings import (
    checked,
)
from jobstream.events import (
    NameKind,
    quote,
)

if TYPE_CHECKING:
    import asyncpg

    from jobstream.services.api import LiveWork

    pass


# Running tasks `status` lists with their progress.
STATUS_RUNNING_SHOWN = 10


@read_model_options
def status(
    job_id: Annotated[
        str,
        typer.Argument(help="The job id that submit printed.", callback=checked(NameKind.JOB_ID)),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    read_models: ReadModels = READ_MODELS,
) -> None:
    """Show a job's status, task counts and its running tasks' progress.

    The counts are the read model's, with the tasks in flight that the workers' liveness
    records show."""
    from jobstream.services.api import job_summary, running_tasks

    async def read(
        conn: "asyncpg.Connection", live: "LiveWork"
    ) -> tuple[dict[str, object], list[dict[str, object]]] | None:
        summary = await job_summary(conn, job_id, live)
        if summary is None:
            return None
        return summary, await running_tasks(conn, job_id, live, limit=STATUS_RUNNING_SHOWN)

    found = read_models.read(read)
    if found is None:
        typer.echo(
            f"error: job {quote(job_id)} not found (not submitted, or not projected yet)", err=True
        )
        raise typer.Exit(1)
    summary, running = found
    if as_json:
        typer.echo(json.dumps({**summary, "running_tasks": running}))
        return
    tasks = summary["tasks"]
    assert isinstance(tasks, dict)
    typer.echo(f"job {job_id}: {summary['status']}")
    if summary.get("error"):
        typer.echo(f"  reason: {summary['error']}")
    typer.echo("  " + "  ".join(f"{state} {n}" for state, n in tasks.items()))
    for task in running:
        progress = task["progress"]
        shown = f": {progress:.0%}" if isinstance(progress, float) else ""
        message = f"  {task['progress_message']}" if task["progress_message"] else ""
        typer.echo(f"  {task['task_id']} running on {task['worker_id']}{shown}{message}")
    more = int(tasks.get("running", 0)) - len(running)
    if more > 0:
        typer.echo(f"  … and {more} more running")
