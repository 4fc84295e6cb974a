"""`jobstream init`, `schema`, and the long-running processes: `worker`, `dispatcher`,
`projector`, `api`, and `up` (all of them at once)."""

import json
from contextlib import AsyncExitStack
from typing import Annotated

import typer

from jobstream.cli._api_options import (
    DEFAULT_RATE_LIMIT_BURST,
    DEFAULT_RATE_LIMIT_PER_S,
    ApiTokenOption,
    CorsOriginsOption,
    RateLimitBurstOption,
    RateLimitOption,
    parse_origins,
    rate_limit,
)
from jobstream.cli._nats_security import nats_security_options
from jobstream.cli._runtime import (
    bus_session,
    check_nats_credentials,
    database_session,
    run,
    run_until_stopped,
    setup_logging,
    stop_on_signals,
    tune_collector,
)
from jobstream.cli._settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DATA_DIR,
    ConcurrencyOption,
    DatabasePoolSizeOption,
    DatabaseUrlOption,
    DataDirOption,
    HandlerOption,
    LeaseOption,
    NatsUrlOption,
    QueueOption,
    SchemaOption,
    checked,
    resolve_endpoints,
)
from jobstream.events import (
    DEFAULT_LEASE_S,
    MAX_PARTITIONS,
    NO_SECURITY,
    NameKind,
    NatsSecurity,
    redact_url,
)
from jobstream.projections import DEFAULT_SCHEMA


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
        async with bus_session(
            endpoints.nats_urls, name="jobstream-init", security=nats_security
        ) as bus:
            await ensure_streams(bus.js, replicas=replicas)
            await ensure_worker_consumer(bus.js, queue, lease_s=lease_s, replicas=replicas)
            await ensure_buckets(bus.js, replicas=replicas)
            try:
                await ensure_schedules(bus.js, replicas=replicas)
            except SchedulesUnsupportedError as exc:
                typer.echo(f"note: schedules are off: {exc}", err=True)
        async with database_session(endpoints.database_url) as pool, pool.acquire() as conn:
            applied = await migrate(conn, schema)
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


def schema() -> None:
    from jobstream.events import event_json_schema

    typer.echo(json.dumps(event_json_schema(), indent=2))


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
        async with bus_session(
            endpoints.nats_urls, name="jobstream-worker", security=nats_security
        ) as bus:
            await ensure_streams(bus.js)
            await ensure_buckets(bus.js)
            await Worker(bus, options=options, handlers=registry).run(stop)

    tune_collector()
    run(main())


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
        async with bus_session(
            endpoints.nats_urls, name="jobstream-dispatcher", security=nats_security
        ) as bus:
            await Dispatcher(bus, lease_s=lease_s, submit_timeout_s=submit_timeout_s).run(stop)

    tune_collector()
    run(main())


@nats_security_options
def projector(
    nats_url: NatsUrlOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    schema: SchemaOption = DEFAULT_SCHEMA,
    only: Annotated[str | None, typer.Option(help="Run one projector: postgres or ndjson.")] = None,
    partitions: Annotated[
        int,
        typer.Option(
            envvar="JOBSTREAM_PROJECTOR_PARTITIONS",
            show_envvar=True,
            min=1,
            max=MAX_PARTITIONS,
            help="Run the PostgreSQL projection as this many processes, which share the jobs.",
        ),
    ] = 1,
    partition: Annotated[
        int,
        typer.Option(
            envvar="JOBSTREAM_PROJECTOR_PARTITION",
            show_envvar=True,
            min=0,
            max=MAX_PARTITIONS - 1,
            help="Which of the --partitions this process is (0 also runs the NDJSON files).",
        ),
    ] = 0,
    database_pool_size: DatabasePoolSizeOption = 3,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Run the projectors: PostgreSQL read models and daily NDJSON result files."""
    from jobstream.events import SharedSource, ensure_streams
    from jobstream.projections import NdjsonProjector, Partition, PostgresProjector, migrate

    if only not in (None, "postgres", "ndjson"):
        raise typer.BadParameter("--only takes postgres or ndjson")
    if partition >= partitions:
        raise typer.BadParameter(
            f"--partition {partition} of --partitions {partitions}: use 0 to {partitions - 1}",
            param_hint="--partition",
        )
    if only == "ndjson" and partition != 0:
        raise typer.BadParameter(
            "the NDJSON files are written by one process: run it with --partition 0",
            param_hint="--partition",
        )
    part = Partition(partition, partitions)
    setup_logging()
    endpoints = resolve_endpoints(nats_url, database_url, data_dir, need_database=only != "ndjson")

    async def main() -> None:
        stop = stop_on_signals()
        async with AsyncExitStack() as sessions:
            bus = await sessions.enter_async_context(
                bus_session(endpoints.nats_urls, name="jobstream-projector", security=nats_security)
            )
            await ensure_streams(bus.js)
            # Both projectors of one partition read the whole log: read once, for both.
            source = SharedSource(bus).batches if only is None and part.count == 1 else None
            runners = []
            if only in (None, "postgres"):
                pool = await sessions.enter_async_context(
                    database_session(endpoints.database_url, size=database_pool_size)
                )
                async with pool.acquire() as conn:
                    await migrate(conn, schema)
                projector = PostgresProjector(
                    bus, pool, schema=schema, partition=part, source=source
                )
                runners.append(projector.run)
            if only == "ndjson" or (only is None and part.index == 0):
                runners.append(NdjsonProjector(bus, endpoints.results_dir, source=source).run)
            await run_until_stopped(stop, *runners)

    tune_collector()
    run(main())


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
    token: ApiTokenOption = None,
    cors_origins: CorsOriginsOption = None,
    rate_limit_per_s: RateLimitOption = DEFAULT_RATE_LIMIT_PER_S,
    rate_limit_burst: RateLimitBurstOption = DEFAULT_RATE_LIMIT_BURST,
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
        api_token=token,
        cors_origins=parse_origins(cors_origins),
        rate_limit_per_s=rate_limit(rate_limit_per_s),
        rate_limit_burst=rate_limit_burst,
    )
    uvicorn.run(application, host=host, port=port, log_level="warning")


@nats_security_options
def up(
    nats_url: NatsUrlOption = None,
    database_url: DatabaseUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
    projectors: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_PARTITIONS,
            help="PostgreSQL projector processes, one per partition of the jobs (read models"
            " built by another count need `jobstream replay --partitions N` first).",
        ),
    ] = 1,
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
    """Start everything on this machine; Ctrl-C stops all cleanly.

    Embedded NATS and PostgreSQL unless URLs are given, then the dispatcher, workers,
    projectors and API."""
    from jobstream.cli._stack import LocalStack, StackOptions

    setup_logging()
    options = StackOptions(
        data_dir=data_dir,
        nats_url=nats_url,
        database_url=database_url,
        api_host=api_host,
        api_port=api_port,
        workers=workers,
        projectors=projectors,
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
