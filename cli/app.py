"""The `jobstream` command: submit, watch and run every process."""

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jobstream.cli._browse import jobs, live_work_once, show, tasks, workers_app
from jobstream.cli._events import events_app
from jobstream.cli._nats_security import nats_security_options
from jobstream.cli._runtime import (
    bus_session,
    check_nats_credentials,
    connect_bus,
    connect_database,
    exit_code,
    run,
    run_until_stopped,
    setup_logging,
    stop_on_signals,
    usage_error,
)
from jobstream.cli._schedule_commands import populate, schedule_app
from jobstream.cli._settings import (
    DEFAULT_DATA_DIR,
    ConcurrencyOption,
    DatabasePoolSizeOption,
    DatabaseUrlOption,
    DataDirOption,
    LeaseOption,
    NatsUrlOption,
    QueueOption,
    SchemaOption,
    checked,
    resolve_endpoints,
)
from jobstream.events import (
    DEFAULT_LEASE_S,
    MAX_TASKS_PER_JOB,
    NO_SECURITY,
    JobstreamError,
    NameKind,
    NatsSecurity,
    quote,
    redact_url,
)
from jobstream.projections import DEFAULT_SCHEMA

if TYPE_CHECKING:
    from jobstream.cli._demo import DemoReport
    from jobstream.cli._submit import SubmitOutcome

app = typer.Typer(
    name="jobstream",
    help="Distributed jobs on NATS JetStream: submit, watch, and run every process.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # --install-completion / --show-completion for bash, zsh, fish and PowerShell.
    add_completion=True,
)
log = logging.getLogger("jobstream")


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


DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_ATTEMPTS = 3
# Running tasks `status` lists with their progress.
STATUS_RUNNING_SHOWN = 10
HandlerOption = Annotated[
    list[str] | None,
    typer.Option(
        "--handler",
        help="Extra task kind as name=package.module:function (repeatable).",
    ),
]


# --- set-up -----------------------------------------------------------------


@app.command()
@nats_security_options
def init(
    nats_url: NatsUrlOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    lease_s: LeaseOption = DEFAULT_LEASE_S,
    queue: QueueOption = "default",
    schema: SchemaOption = DEFAULT_SCHEMA,
    replicas: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=5,
            help="Stream replicas (3 on a cluster). Default: keep the existing count, 1 if new.",
        ),
    ] = None,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Create the streams, the queue's consumer, the buckets and the read-model tables."""
    from jobstream.events import (
        SchedulesUnsupportedError,
        ensure_buckets,
        ensure_schedules,
        ensure_streams,
        ensure_worker_consumer,
    )
    from jobstream.projections import migrate

    endpoints = resolve_endpoints(nats_url, database_url, data_dir)

    async def main() -> None:
        bus = await connect_bus(endpoints.nats_urls, name="jobstream-init", security=nats_security)
        try:
            await ensure_streams(bus.js, replicas=replicas)
            await ensure_worker_consumer(bus.js, queue, lease_s=lease_s, replicas=replicas)
            await ensure_buckets(bus.js, replicas=replicas)
            try:
                await ensure_schedules(bus.js, replicas=replicas)
            except SchedulesUnsupportedError as exc:
                typer.echo(f"note: schedules are off: {exc}", err=True)
        finally:
            await bus.close()
        pool = await connect_database(endpoints.database_url, min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                applied = await migrate(conn, schema)
        finally:
            await pool.close()
        typer.echo(f"streams ready; migrations applied: {', '.join(applied) or 'none needed'}")

    run(main())


# Typer keeps a docstring's line breaks; this text wraps to the terminal instead.
SCHEMA_HELP = (
    "Print the JSON Schema (draft 2020-12) of the events, for integrators.\n\n"
    "The document validates one event, as read from an `evt.>` subject: a `oneOf` of the event "
    "definitions in `$defs`, told apart by their `type`. Every event has `type`, `id` and `at` "
    "(an RFC 3339 `date-time`); ids carry their charset and length bound. `$defs/TaskMessage` "
    "is the work-queue message on `task.<queue>.<job_id>`. It loads in strict validators "
    "(ajv's strict mode, Python's `jsonschema`). Fields may be added later: ignore unknown ones."
)


@app.command(help=SCHEMA_HELP)
def schema() -> None:
    from jobstream.events import event_json_schema

    typer.echo(json.dumps(event_json_schema(), indent=2))


# --- processes --------------------------------------------------------------


@app.command()
@nats_security_options
def worker(
    ctx: typer.Context,
    nats_url: NatsUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    database_url: DatabaseUrlOption = None,
    queue: QueueOption = "default",
    concurrency: ConcurrencyOption = DEFAULT_CONCURRENCY,
    lease_s: LeaseOption = DEFAULT_LEASE_S,
    grace_s: Annotated[float, typer.Option(min=0, help="Drain time on SIGTERM.")] = 10.0,
    retry_base_s: Annotated[float, typer.Option(min=0, help="Backoff base.")] = 1.0,
    retry_cap_s: Annotated[float, typer.Option(min=0, help="Backoff cap.")] = 60.0,
    failure_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Simulated failure rate, as the old bots.")
    ] = 0.0,
    extra_duration_s: Annotated[
        float, typer.Option(min=0.0, help="Simulated processing time added to each task.")
    ] = 0.0,
    worker_id: Annotated[
        str | None,
        typer.Option(help="Default: host-pid-random.", callback=checked(NameKind.WORKER_ID)),
    ] = None,
    handler: HandlerOption = None,
    processes: Annotated[
        int,
        typer.Option(
            envvar="JOBSTREAM_WORKER_PROCESSES",
            show_envvar=True,
            min=1,
            max=256,
            help="Worker processes under one supervisor, which restarts a crashed one and"
            " drains them all on SIGTERM.",
        ),
    ] = 1,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Run a worker: pull tasks from the queue and run their handlers."""
    from jobstream.services.worker import HandlerRegistry, Worker, WorkerOptions

    setup_logging()
    endpoints = resolve_endpoints(nats_url, database_url, data_dir, need_database=False)
    if processes > 1:
        from jobstream.cli._worker_pool import run_worker_processes

        raise typer.Exit(
            run_worker_processes(
                ctx,
                processes=processes,
                nats_urls=endpoints.nats_urls,
                grace_s=grace_s,
                nats_security=nats_security,
            )
        )
    options = WorkerOptions(
        queue=queue,
        concurrency=concurrency,
        lease_s=lease_s,
        grace_s=grace_s,
        retry_base_s=retry_base_s,
        retry_cap_s=retry_cap_s,
        failure_rate=failure_rate,
        extra_duration_s=extra_duration_s,
        worker_id=worker_id,
    )
    registry = HandlerRegistry.default(handler)
    from jobstream.events import ensure_buckets, ensure_streams

    async def main() -> None:
        stop = stop_on_signals()
        bus = await connect_bus(
            endpoints.nats_urls, name="jobstream-worker", security=nats_security
        )
        try:
            await ensure_streams(bus.js)
            await ensure_buckets(bus.js)
            await Worker(bus, options=options, handlers=registry).run(stop)
        finally:
            await bus.close()

    run(main())


@app.command()
@nats_security_options
def dispatcher(
    nats_url: NatsUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    database_url: DatabaseUrlOption = None,
    lease_s: LeaseOption = DEFAULT_LEASE_S,
    submit_timeout_s: Annotated[
        float,
        typer.Option(
            envvar="JOBSTREAM_SUBMIT_TIMEOUT_S",
            show_envvar=True,
            min=1,
            max=7 * 86_400,
            help="A streamed job not sealed this long after its header is ended as rejected.",
        ),
    ] = 600.0,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Run the dispatcher: expand jobs into tasks, end finished jobs, report lost workers."""
    from jobstream.services.dispatcher import Dispatcher

    setup_logging()
    endpoints = resolve_endpoints(nats_url, database_url, data_dir, need_database=False)

    async def main() -> None:
        stop = stop_on_signals()
        bus = await connect_bus(
            endpoints.nats_urls, name="jobstream-dispatcher", security=nats_security
        )
        try:
            await Dispatcher(bus, lease_s=lease_s, submit_timeout_s=submit_timeout_s).run(stop)
        finally:
            await bus.close()

    run(main())


@app.command()
@nats_security_options
def projector(
    nats_url: NatsUrlOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    schema: SchemaOption = DEFAULT_SCHEMA,
    only: Annotated[str | None, typer.Option(help="Run one projector: postgres or ndjson.")] = None,
    database_pool_size: DatabasePoolSizeOption = 2,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Run the projectors: PostgreSQL read models and daily NDJSON result files."""
    from jobstream.events import ensure_streams
    from jobstream.projections import NdjsonProjector, PostgresProjector, migrate

    if only not in (None, "postgres", "ndjson"):
        raise typer.BadParameter("--only takes postgres or ndjson")
    setup_logging()
    endpoints = resolve_endpoints(nats_url, database_url, data_dir, need_database=only != "ndjson")

    async def main() -> None:
        stop = stop_on_signals()
        bus = await connect_bus(
            endpoints.nats_urls, name="jobstream-projector", security=nats_security
        )
        pool = None
        try:
            await ensure_streams(bus.js)
            runners = []
            if only in (None, "postgres"):
                pool = await connect_database(
                    endpoints.database_url, min_size=1, max_size=database_pool_size
                )
                async with pool.acquire() as conn:
                    await migrate(conn, schema)
                runners.append(PostgresProjector(bus, pool, schema=schema).run)
            if only in (None, "ndjson"):
                runners.append(NdjsonProjector(bus, endpoints.results_dir).run)
            await run_until_stopped(stop, *runners)
        finally:
            if pool is not None:
                await pool.close()
            await bus.close()

    run(main())


@app.command()
@nats_security_options
def api(
    nats_url: NatsUrlOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    schema: SchemaOption = DEFAULT_SCHEMA,
    host: Annotated[str, typer.Option(envvar="JOBSTREAM_API_HOST", show_envvar=True)] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(envvar="JOBSTREAM_API_PORT", show_envvar=True, min=0, max=65535)
    ] = 8000,
    ready_max_lag_s: Annotated[
        float,
        typer.Option(
            envvar="JOBSTREAM_READY_MAX_LAG_S",
            show_envvar=True,
            min=0.1,
            max=86_400,
            help="/readyz is 503 while the dispatcher or a projection has left an event this"
            " old unapplied.",
        ),
    ] = 30.0,
    database_pool_size: DatabasePoolSizeOption = 10,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Run the read-only HTTP API and the dashboard."""
    import uvicorn

    from jobstream.services.api import create_app

    setup_logging()
    endpoints = resolve_endpoints(nats_url, database_url, data_dir)
    if endpoints.nats_urls:
        run(check_nats_credentials(endpoints.nats_urls, nats_security))
    application = create_app(
        database_url=endpoints.database_url,
        schema=schema,
        nats_urls=endpoints.nats_urls,
        nats_security=nats_security,
        ready_max_lag_s=ready_max_lag_s,
        pool_max_size=database_pool_size,
    )
    uvicorn.run(application, host=host, port=port, log_level="warning")


@app.command()
@nats_security_options
def up(
    nats_url: NatsUrlOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
    concurrency: ConcurrencyOption = DEFAULT_CONCURRENCY,
    lease_s: LeaseOption = DEFAULT_LEASE_S,
    api_host: Annotated[
        str, typer.Option(envvar="JOBSTREAM_API_HOST", show_envvar=True)
    ] = "127.0.0.1",
    api_port: Annotated[
        int, typer.Option(envvar="JOBSTREAM_API_PORT", show_envvar=True, min=1, max=65535)
    ] = 8000,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Start everything: embedded NATS and PostgreSQL unless URLs are given, then the
    dispatcher, workers, projectors and API. Ctrl-C stops all cleanly."""
    from jobstream.cli._stack import LocalStack, StackOptions

    setup_logging()
    options = StackOptions(
        data_dir=data_dir,
        nats_url=nats_url,
        database_url=database_url,
        api_host=api_host,
        api_port=api_port,
        workers=workers,
        concurrency=concurrency,
        lease_s=lease_s,
        nats_security=nats_security,
    )

    async def main() -> None:
        stop = stop_on_signals()
        async with LocalStack(options) as stack:
            typer.echo(f"jobstream is up: API {stack.api_url}  NATS {redact_url(stack.nats_url)}")
            typer.echo("Ctrl-C stops everything.")
            await stop.wait()
        typer.echo("stopped")

    run(main())


# --- jobs --------------------------------------------------------------------


@app.command()
@nats_security_options
def submit(
    kind: Annotated[str | None, typer.Option(help="Task kind: sum, noop, sleep, fail, ...")] = None,
    args: Annotated[str, typer.Option("--args", help="Task arguments as a JSON object.")] = "{}",
    count: Annotated[
        int, typer.Option(min=1, max=MAX_TASKS_PER_JOB, help="Copies of the task.")
    ] = 1,
    tasks_file: Annotated[
        Path | None,
        typer.Option(
            help='NDJSON file, one {"kind": ..., "args": {...}} per line, any size; - reads'
            " stdin. Read as a stream; a file is checked whole before anything is sent."
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="Job name.")] = "",
    queue: QueueOption = "default",
    max_attempts: Annotated[
        int | None,
        typer.Option(min=1, max=1000, help="Attempts per task. Default: the kind's own, else 3."),
    ] = None,
    timeout_s: Annotated[float | None, typer.Option(min=0.001, help="Per-task timeout.")] = None,
    chunk_size: Annotated[
        int,
        typer.Option(
            min=1,
            max=10_000,
            help="Chunked mode: tasks per message, run in turn by one worker, their results in"
            " one event (for many tiny tasks). 1: a message per task.",
        ),
    ] = 1,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            help="Submit once: another submit with this key (any process, any time) prints the"
            " first one's job id, or finishes its submission if it was cut short."
        ),
    ] = None,
    priority: Annotated[
        int,
        typer.Option(
            envvar="JOBSTREAM_PRIORITY",
            show_envvar=True,
            min=-(2**31),
            max=2**31 - 1,
            help="Above 0: high level, 0: normal, below 0: low. Workers serve higher levels"
            " first, keeping at least 1 slot in 10 for each lower level that has work.",
        ),
    ] = 0,
    handler: HandlerOption = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Stay until the job ends (a live progress bar on a terminal), print its"
            " summary; exit 1 unless every task succeeded.",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"job_id": ..., "duplicate": ...}.')
    ] = False,
    nats_url: NatsUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Submit a job of one task or millions; print its id."""
    from jobstream.cli._submit import SubmitPlan, no_worker_warning, plan_submission, submit_planned
    from jobstream.services.worker import HandlerRegistry

    try:
        if (kind is None) == (tasks_file is None):
            raise JobstreamError("give either --kind (with --args, --count) or --tasks-file")
        plan: SubmitPlan = plan_submission(
            HandlerRegistry.default(handler),
            kind=kind,
            args=args,
            count=count,
            tasks_file=tasks_file,
            name=name,
            queue=queue,
            max_attempts=max_attempts,
            timeout_s=timeout_s,
            chunk_size=chunk_size,
            idempotency_key=idempotency_key,
            priority=priority,
        )
        endpoints = resolve_endpoints(nats_url, None, data_dir, need_database=False)
    except JobstreamError as exc:
        usage_error(str(exc))

    async def main() -> "SubmitOutcome":
        bus = await connect_bus(
            endpoints.nats_urls, name="jobstream-submit", security=nats_security
        )
        try:
            return await submit_planned(bus, plan, show_progress=sys.stderr.isatty())
        finally:
            await bus.close()

    outcome = run(main())
    if outcome.duplicate:
        typer.echo(
            f"note: a job with this idempotency key was already submitted: {outcome.job_id}",
            err=True,
        )
    if outcome.no_worker:
        typer.echo(no_worker_warning(plan.queue), err=True)
    if not wait:
        if as_json:
            typer.echo(json.dumps({"job_id": outcome.job_id, "duplicate": outcome.duplicate}))
        else:
            typer.echo(outcome.job_id)
        return
    if not as_json:
        typer.echo(outcome.job_id)
    _watch_until_ended(
        endpoints.nats_urls,
        outcome.job_id,
        as_json=as_json,
        security=nats_security,
        extra={"duplicate": outcome.duplicate},
    )


@app.command()
@nats_security_options
def watch(
    job_id: Annotated[
        str,
        typer.Argument(help="The job id that submit printed.", callback=checked(NameKind.JOB_ID)),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    nats_url: NatsUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Follow a job until it ends: a live progress bar with its rate and time left (on a
    terminal), then its summary. Exit 1 unless every task succeeded."""
    endpoints = resolve_endpoints(nats_url, None, data_dir, need_database=False)
    _watch_until_ended(endpoints.nats_urls, job_id, as_json=as_json, security=nats_security)


def _watch_until_ended(
    nats_urls: list[str],
    job_id: str,
    *,
    as_json: bool,
    security: NatsSecurity,
    extra: dict[str, object] | None = None,
) -> None:
    from jobstream.cli._watch import JobTally, watch_job

    async def main() -> JobTally:
        async with bus_session(nats_urls, name="jobstream-watch", security=security) as bus:
            return await watch_job(bus, job_id, show_progress=sys.stderr.isatty())

    tally = run(main())
    if as_json:
        typer.echo(json.dumps({**tally.as_dict(), **(extra or {})}))
    else:
        typer.echo(tally.line())
    if not tally.ok:
        raise typer.Exit(1)


def _register_crawl() -> None:
    from jobstream.cli.crawl import CRAWL_HELP, crawl

    app.command("crawl", help=CRAWL_HELP)(crawl)


_register_crawl()


@app.command()
@nats_security_options
def cancel(
    job_id: Annotated[
        str, typer.Argument(help="The job to cancel.", callback=checked(NameKind.JOB_ID))
    ],
    reason: Annotated[str, typer.Option(help="Recorded in the job.cancelled event.")] = "",
    nats_url: NatsUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Cancel a job: its queued tasks are purged, running ones stop within a lease tick."""
    from jobstream.cli._jobs import cancel_job

    endpoints = resolve_endpoints(nats_url, None, data_dir, need_database=False)

    async def main() -> None:
        bus = await connect_bus(
            endpoints.nats_urls, name="jobstream-cancel", security=nats_security
        )
        try:
            await cancel_job(bus, job_id, reason=reason)
        finally:
            await bus.close()

    run(main())
    typer.echo(f"job {job_id} cancelled")


app.add_typer(schedule_app, name="schedule")
app.add_typer(events_app, name="events")
for _browse_command in (jobs, tasks, show):
    app.command()(_browse_command)
app.add_typer(workers_app, name="workers")
app.command()(populate)


dlq_app = typer.Typer(help="Dead-lettered tasks: list them, give them another round.")
app.add_typer(dlq_app, name="dlq")


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
        pool = await connect_database(
            endpoints.database_url, min_size=1, max_size=1, server_settings={"search_path": schema}
        )
        try:
            async with pool.acquire() as conn:
                return await list_dead_letters(conn, job_id=job_id, limit=limit)
        finally:
            await pool.close()

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
        bus = await connect_bus(endpoints.nats_urls, name="jobstream-dlq", security=nats_security)
        pool = await connect_database(
            endpoints.database_url, min_size=1, max_size=1, server_settings={"search_path": schema}
        )
        try:
            async with pool.acquire() as conn:
                return await retry_dead_letters(bus, conn, target=target, retry_all=retry_all)
        finally:
            await pool.close()
            await bus.close()

    outcome = run(main())
    for task_id, reason in outcome.skipped.items():
        typer.echo(f"skipped {task_id}: {reason}", err=True)
    typer.echo(f"requeued {len(outcome.requeued)} task(s)")


@app.command()
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
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Rebuild the read models or the NDJSON files from the log, or print the log as NDJSON."""
    from jobstream.cli._replay import TARGETS, seq_since
    from jobstream.cli._replay import replay as run_replay

    if target not in TARGETS:
        raise typer.BadParameter(f"--target takes one of {', '.join(TARGETS)}")
    endpoints = resolve_endpoints(
        nats_url, database_url, data_dir, need_database=target == "postgres"
    )

    async def main() -> str:
        bus = await connect_bus(
            endpoints.nats_urls, name="jobstream-replay", security=nats_security
        )
        pool = None
        try:
            start = (
                await seq_since(bus, since.replace(tzinfo=since.tzinfo or UTC))
                if since
                else from_seq
            )
            if target == "postgres":
                pool = await connect_database(endpoints.database_url, min_size=2, max_size=4)
            report = await run_replay(
                bus,
                pool,
                target=target,
                from_seq=start,
                job_id=job_id,
                schema=schema,
                results_dir=endpoints.results_dir,
                show_progress=sys.stderr.isatty(),
            )
        finally:
            if pool is not None:
                await pool.close()
            await bus.close()
        return (
            f"replayed {report.events} events (seq {report.first_seq}..{report.last_seq}) "
            f"into {target} in {report.seconds:.2f}s: {report.events_per_s:,.0f} events/s"
        )

    summary = run(main())
    typer.echo(summary, err=True)


@app.command()
@nats_security_options
def status(
    job_id: Annotated[
        str,
        typer.Argument(help="The job id that submit printed.", callback=checked(NameKind.JOB_ID)),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    nats_url: NatsUrlOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    schema: SchemaOption = DEFAULT_SCHEMA,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Show a job's status, its task counts (the read model, with the tasks in flight that
    the workers' liveness records show) and its running tasks' progress."""
    from jobstream.services.api import job_summary, running_tasks

    endpoints = resolve_endpoints(nats_url, database_url, data_dir, need_nats=False)

    async def main() -> tuple[dict[str, object] | None, list[dict[str, object]], str]:
        live, note = await live_work_once(endpoints.nats_urls, nats_security)
        pool = await connect_database(
            endpoints.database_url, min_size=1, max_size=1, server_settings={"search_path": schema}
        )
        try:
            async with pool.acquire() as conn:
                summary = await job_summary(conn, job_id, live)
                running = await running_tasks(conn, job_id, live, limit=STATUS_RUNNING_SHOWN)
                return summary, running, note
        finally:
            await pool.close()

    summary, running, note = run(main())
    if summary is None:
        typer.echo(
            f"error: job {quote(job_id)} not found (not submitted, or not projected yet)", err=True
        )
        raise typer.Exit(1)
    if note:
        typer.echo(note, err=True)
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


@app.command()
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
            bus = await connect_bus([stack.nats_url], name="jobstream-demo", security=nats_security)
            pool = await connect_database(
                stack.database_url, min_size=1, max_size=2, server_settings={"search_path": schema}
            )
            try:
                report = await run_demo(
                    bus,
                    pool,
                    api_url=stack.api_url,
                    results_dir=data_dir / "results",
                    timeout_s=timeout_s,
                )
            finally:
                await pool.close()
                await bus.close()
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


# --- measuring -----------------------------------------------------------------


@app.command()
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
            "one_big_job, recovery, replay, ceiling, baselines."
        ),
    ] = None,
    lease_s: Annotated[
        float | None,
        typer.Option(min=0.5, help="Workers' lease in seconds (default 5; 2 with --quick)."),
    ] = None,
    nats_sync_always: Annotated[
        bool, typer.Option("--nats-sync-always", help="Embedded nats-server fsyncs every write.")
    ] = False,
    nats_url: NatsUrlOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Measure throughput, latency and recovery, against JetStream's own ceiling and the two
    Postgres designs jobstream replaces, in one run (embedded servers unless URLs are given)."""
    from rich.console import Console

    from jobstream.cli.bench import build_options, render, run_bench, stderr_progress, to_json

    try:
        options = build_options(
            quick=quick,
            tasks=tasks,
            workers=workers,
            concurrency=concurrency,
            baseline_concurrency=baseline_concurrency,
            runs=runs,
            only=only,
            lease_s=lease_s,
            nats_url=nats_url,
            database_url=database_url,
            nats_sync_always=nats_sync_always,
        )
    except JobstreamError as exc:
        usage_error(str(exc))
    setup_logging("WARNING")
    summary = run(run_bench(options, stderr_progress()))
    if as_json:
        typer.echo(to_json(summary))
    else:
        render(summary, Console())


def main() -> None:
    try:
        app()
    except JobstreamError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exit_code(exc))
