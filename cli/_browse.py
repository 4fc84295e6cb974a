"""`jobstream jobs`, `tasks`, `workers` and `show`: the read models, as the API shows them
(with the tasks in flight that the workers' liveness records show), in a table or as NDJSON."""

import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from jobstream.cli._read_models import ReadModels, read_model_options
from jobstream.cli._runtime import run, usage_error
from jobstream.cli._settings import (
    checked,
    resolve_endpoints,
)
from jobstream.events import (
    MAX_LENGTH,
    JobStatus,
    JobstreamError,
    NameKind,
    TaskState,
    quote,
)

if TYPE_CHECKING:
    import asyncpg

    from jobstream.services.api import LiveWork

T = TypeVar("T")

LimitOption = Annotated[int, typer.Option(min=1, max=500, help="Rows to show, at most 500.")]
JsonOption = Annotated[bool, typer.Option("--json", help="NDJSON: one object per line.")]
# Errors are cut to this in a table (the JSON has them whole).
ERROR_SHOWN = 60
# The default a command's `read_models` parameter never keeps (`read_model_options` fills it).
READ_MODELS = ReadModels()


@read_model_options
def jobs(
    status: Annotated[JobStatus | None, typer.Option(help="Only jobs in this status.")] = None,
    queue: Annotated[
        str | None,
        typer.Option(help="Only jobs of this queue.", callback=checked(NameKind.QUEUE)),
    ] = None,
    labels: Annotated[
        list[str] | None,
        typer.Option("--label", help="KEY=VALUE: only jobs with this label (repeatable: all)."),
    ] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Only jobs submitted at or after this time (UTC).")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option(help="Only jobs submitted before this time (UTC).")
    ] = None,
    limit: LimitOption = 20,
    as_json: JsonOption = False,
    read_models: ReadModels = READ_MODELS,
) -> None:
    """List jobs, newest first, with their progress."""
    from jobstream.cli._labels import parse_labels
    from jobstream.services.api import JobPage, jobs_page

    try:
        wanted = parse_labels(labels or [])
    except JobstreamError as exc:
        usage_error(str(exc))

    async def read(conn: "asyncpg.Connection", live: "LiveWork") -> JobPage:
        return await jobs_page(
            conn,
            live,
            status=status,
            queue=queue,
            labels=wanted,
            since=_utc(since),
            until=_utc(until),
            limit=limit,
        )

    page = read_models.read(read)
    rows = [job.model_dump(mode="json") for job in page.jobs]
    if as_json:
        _ndjson(rows)
        return
    _table(
        ["JOB", "NAME", "QUEUE", "STATUS", "DONE", "SUBMITTED"],
        [
            [
                row["job_id"],
                row["name"],
                row["queue"],
                row["status"],
                f"{_done(row['tasks'])}/{row['tasks']['total']}",
                _when(row["submitted_at"]),
            ]
            for row in rows
        ],
        empty="no jobs",
    )


@read_model_options
def tasks(
    job_id: Annotated[
        str, typer.Argument(help="The job whose tasks to list.", callback=checked(NameKind.JOB_ID))
    ],
    state: Annotated[TaskState | None, typer.Option(help="Only tasks in this state.")] = None,
    limit: LimitOption = 50,
    as_json: JsonOption = False,
    read_models: ReadModels = READ_MODELS,
) -> None:
    """List a job's tasks in task order."""
    from jobstream.services.api import TaskPage, tasks_page

    async def read(conn: "asyncpg.Connection", live: "LiveWork") -> TaskPage | None:
        return await tasks_page(conn, job_id, live, state=state, limit=limit)

    page = read_models.read(read)
    if page is None:
        _not_found("job", job_id)
    rows = [task.model_dump(mode="json") for task in page.tasks]
    if as_json:
        _ndjson(rows)
        return
    _table(
        ["TASK", "KIND", "STATE", "ATTEMPTS", "WORKER", "SECONDS", "ERROR"],
        [
            [
                row["task_id"],
                row["kind"],
                row["state"],
                str(row["attempts"]),
                row["worker_id"] or "",
                _seconds(row["duration_s"]),
                _cut(row["error"]),
            ]
            for row in rows
        ],
        empty="no tasks",
    )


workers_app = typer.Typer(
    name="workers",
    help="The workers the log has seen (a table, or --json); `prune` forgets old ones.",
)


@workers_app.callback(invoke_without_command=True)
@read_model_options
def workers(
    ctx: typer.Context,
    as_json: JsonOption = False,
    read_models: ReadModels = READ_MODELS,
) -> None:
    """List the workers the log has seen: active ones first."""
    if ctx.invoked_subcommand is not None:
        return
    from jobstream.services.api import WorkerList, workers_list

    found: WorkerList = read_models.read(workers_list)
    rows = [worker.model_dump(mode="json") for worker in found.workers]
    if as_json:
        _ndjson(rows)
        return
    _table(
        ["WORKER", "STATE", "HOST", "QUEUES", "CONCURRENCY", "SUCCEEDED", "FAILED", "LAST SEEN"],
        [
            [
                row["worker_id"],
                row["state"],
                row["host"],
                ",".join(row["queues"]),
                str(row["concurrency"]),
                f"{row['tasks_succeeded']:,}",
                f"{row['tasks_failed']:,}",
                _when(row["last_seen_at"]),
            ]
            for row in rows
        ],
        empty="no workers",
    )


@workers_app.command("prune")
@read_model_options
def prune(
    older_than_s: Annotated[
        float,
        typer.Option(
            "--older-than-s",
            min=0,
            help="Only workers last seen at least this many seconds ago (0: every one).",
        ),
    ] = 0.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say which would go; change nothing.")
    ] = False,
    read_models: ReadModels = READ_MODELS,
) -> None:
    """Forget stopped and lost workers (the original clean-up): a `worker.forgotten` event
    each, so the read models drop them (and a replay does too). A worker that started again
    meanwhile is kept."""
    from jobstream.cli._prune import prune_workers
    from jobstream.services.api import WorkerList, workers_list

    found: WorkerList = read_models.read(workers_list)
    cutoff = time.time() - older_than_s
    chosen = [
        worker.worker_id
        for worker in found.workers
        if worker.state != "active"
        and (worker.last_seen_at is None or worker.last_seen_at.timestamp() <= cutoff)
    ]
    if dry_run or not chosen:
        for worker_id in chosen:
            typer.echo(f"would forget {worker_id}")
        typer.echo(f"{len(chosen)} worker(s) to forget")
        return
    endpoints = resolve_endpoints(
        read_models.nats_url, None, read_models.data_dir, need_database=False
    )
    forgotten = run(prune_workers(endpoints.nats_urls, read_models.security, chosen))
    typer.echo(f"forgot {len(forgotten)} worker(s)" + _kept(len(chosen) - len(forgotten)))


def _kept(count: int) -> str:
    return f"; kept {count} that started again meanwhile" if count else ""


@read_model_options
def show(
    item_id: Annotated[
        str,
        typer.Argument(
            metavar="JOB_ID|TASK_ID",
            help="A job id, or a task id (JOB_ID-INDEX).",
            callback=checked(NameKind.TASK_ID),
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    read_models: ReadModels = READ_MODELS,
) -> None:
    """Show a job (its counts) or a task (its attempts and errors)."""
    from jobstream.services.api import job_summary, task_detail

    async def read(conn: "asyncpg.Connection", live: "LiveWork") -> dict[str, Any] | None:
        if len(item_id) <= MAX_LENGTH[NameKind.JOB_ID]:  # else only a task id fits
            job = await job_summary(conn, item_id, live)
            if job is not None:
                return {"job": job}
        task = await task_detail(conn, item_id, live)
        return None if task is None else {"task": task.model_dump(mode="json")}

    found = read_models.read(read)
    if found is None:
        _not_found("job or task", item_id)
    if as_json:
        typer.echo(json.dumps(next(iter(found.values()))))
        return
    if "job" in found:
        job = found["job"]
        counts = "  ".join(f"{state} {n}" for state, n in job["tasks"].items())
        typer.echo(f"job {job['job_id']} {job['name']!r} on {job['queue']}: {job['status']}")
        typer.echo(f"  {counts}")
        if job.get("error"):
            typer.echo(f"  reason: {job['error']}")
        return
    task = found["task"]
    typer.echo(
        f"task {task['task_id']} ({task['kind']}) of job {task['job_id']}: {task['state']},"
        f" {task['attempts']} attempt(s)"
    )
    typer.echo(f"  args: {json.dumps(task['args'])}")
    if task["result"] is not None:
        typer.echo(f"  result: {json.dumps(task['result'])}")
    for attempt in task["history"]:
        error = f": {attempt['error']}" if attempt["error"] else ""
        typer.echo(
            f"  attempt {attempt['attempt']} on {attempt['worker_id']}: {attempt['outcome']}"
            f" {_seconds(attempt['duration_s'])}s{error}"
        )


def _utc(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=moment.tzinfo or UTC) if moment else None


def _not_found(what: str, item_id: str) -> NoReturn:
    typer.echo(f"error: {what} {quote(item_id)} not found (or not projected yet)", err=True)
    raise typer.Exit(1)


def _ndjson(rows: Iterable[dict[str, Any]]) -> None:
    for row in rows:
        typer.echo(json.dumps(row))


def _table(headers: list[str], rows: list[list[str]], *, empty: str) -> None:
    from rich.console import Console
    from rich.table import Table

    if not rows:
        typer.echo(empty)
        return
    table = Table(*headers, box=None, pad_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*row)
    Console(soft_wrap=True).print(table)


def _done(counts: dict[str, int]) -> int:
    return counts["succeeded"] + counts["dead_lettered"] + counts["cancelled"]


def _when(value: str | None) -> str:
    if value is None:
        return ""
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _cut(error: str | None) -> str:
    if not error:
        return ""
    line = error.splitlines()[0]
    return line if len(line) <= ERROR_SHOWN else line[: ERROR_SHOWN - 1] + "…"
