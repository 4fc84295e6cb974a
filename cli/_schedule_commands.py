"""The `schedule` commands (add, list, rm) and `populate`."""

import json
import random
from typing import TYPE_CHECKING, Annotated

import typer

from jobstream.cli._nats_security import nats_security_options
from jobstream.cli._runtime import bus_session, run, usage_error
from jobstream.cli._settings import (
    DEFAULT_DATA_DIR,
    DataDirOption,
    NatsUrlOption,
    QueueOption,
    checked,
    resolve_endpoints,
)
from jobstream.events import MAX_TASKS_PER_JOB, NO_SECURITY, JobstreamError, NameKind, NatsSecurity

if TYPE_CHECKING:
    from jobstream.cli._schedules import ScheduleRow

schedule_app = typer.Typer(
    help="Jobs submitted on a schedule, fired by nats-server itself: exactly one job per"
    " period, whatever number of dispatchers run.",
    no_args_is_help=True,
)

ScheduleNameArgument = Annotated[
    str,
    typer.Argument(
        help="The schedule's name: letters, digits, '_' and '-', at most 64.",
        callback=checked(NameKind.SCHEDULE),
    ),
]


@schedule_app.command("add")
@nats_security_options
def schedule_add(
    name: ScheduleNameArgument,
    kind: Annotated[str, typer.Option(help="Task kind: sum, noop, sleep, fail, ...")],
    every: Annotated[
        str | None,
        typer.Option(help="Fire at this interval: 30s, 10m, 1h30m, 1d (at least 1s)."),
    ] = None,
    cron: Annotated[
        str | None,
        typer.Option(
            help="Fire on this cron expression, in UTC: five fields (minute hour day-of-month"
            " month day-of-week), e.g. '*/10 * * * *', or @hourly, @daily, @weekly, @monthly."
        ),
    ] = None,
    args: Annotated[str, typer.Option("--args", help="Task arguments as a JSON object.")] = "{}",
    count: Annotated[
        int, typer.Option(min=1, max=MAX_TASKS_PER_JOB, help="Copies of the task in each job.")
    ] = 1,
    queue: QueueOption = "default",
    priority: Annotated[
        int,
        typer.Option(
            min=-(2**31), max=2**31 - 1, help="Each job's priority (above 0: high, below: low)."
        ),
    ] = 0,
    max_attempts: Annotated[
        int | None,
        typer.Option(min=1, max=1000, help="Attempts per task. Default: the kind's own, else 3."),
    ] = None,
    timeout_s: Annotated[float | None, typer.Option(min=0.001, help="Per-task timeout.")] = None,
    job_name: Annotated[
        str, typer.Option("--name", help="Each job's name. Default: the schedule's.")
    ] = "",
    labels: Annotated[
        list[str] | None,
        typer.Option(
            "--label", help="KEY=VALUE on each job (repeatable); `schedule` is set to NAME."
        ),
    ] = None,
    handler: Annotated[
        list[str] | None,
        typer.Option(help="Extra task kind as name=package.module:function (repeatable)."),
    ] = None,
    nats_url: NatsUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Add a schedule: from now on, each period submits one job of these options."""
    from jobstream.cli._schedules import (
        JobTemplate,
        add_schedule,
        describe_timing,
        next_fire,
        plan_schedule,
    )
    from jobstream.services.worker import HandlerRegistry

    template = JobTemplate(
        kind=kind,
        args=args,
        count=count,
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        timeout_s=timeout_s,
        job_name=job_name,
        labels=labels or [],
    )
    try:
        registry = HandlerRegistry.default(handler)
        schedule = plan_schedule(registry, name, every=every, cron=cron, job=template)
        endpoints = resolve_endpoints(nats_url, None, data_dir, need_database=False)
    except JobstreamError as exc:
        usage_error(str(exc))

    async def main() -> None:
        async with bus_session(
            endpoints.nats_urls, name="jobstream-schedule", security=nats_security
        ) as bus:
            await add_schedule(bus, schedule)

    run(main())
    first = next_fire(schedule, schedule.created_at)
    typer.echo(f"schedule {name} added: {describe_timing(schedule)}, first at {first.isoformat()}")


@schedule_app.command("list")
@nats_security_options
def schedule_list(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per schedule and line.")
    ] = False,
    nats_url: NatsUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """List the schedules: when each fires next, and the job its last tick submitted."""
    from jobstream.cli._schedules import list_schedules

    endpoints = resolve_endpoints(nats_url, None, data_dir, need_database=False)

    async def main() -> "list[ScheduleRow]":
        async with bus_session(
            endpoints.nats_urls, name="jobstream-schedule", security=nats_security
        ) as bus:
            return await list_schedules(bus)

    rows = run(main())
    if as_json:
        import msgspec

        for row in rows:
            typer.echo(msgspec.json.encode(row).decode())
        return
    if not rows:
        typer.echo("no schedules")
        return
    typer.echo(f"{'name':<24} {'when':<22} {'next fire (UTC)':<20} last job")
    for row in rows:
        typer.echo(_row_line(row))


def _row_line(row: "ScheduleRow") -> str:
    if row.problem is not None:
        return f"{row.name:<24} unreadable: {row.problem}"
    next_at = row.next_fire_at.strftime("%Y-%m-%d %H:%M:%S") if row.next_fire_at else "-"
    last = row.last_job_id or "-"
    if row.last_job_id and not row.last_job_submitted:
        last += " (fired; no dispatcher has submitted it yet)"
    return f"{row.name:<24} {row.timing:<22} {next_at:<20} {last}"


@schedule_app.command("rm")
@nats_security_options
def schedule_rm(
    name: ScheduleNameArgument,
    nats_url: NatsUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Remove a schedule: it fires no more (jobs it submitted are not touched)."""
    from jobstream.cli._schedules import remove_schedule

    endpoints = resolve_endpoints(nats_url, None, data_dir, need_database=False)

    async def main() -> None:
        async with bus_session(
            endpoints.nats_urls, name="jobstream-schedule", security=nats_security
        ) as bus:
            await remove_schedule(bus, name)

    run(main())
    typer.echo(f"schedule {name} removed")


@nats_security_options
def populate(
    count: Annotated[int, typer.Argument(min=1, max=100_000, help="How many jobs.")],
    queue: QueueOption = "default",
    seed: Annotated[int | None, typer.Option(help="Seed of the random numbers.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"job_ids": [...]}.')] = False,
    nats_url: NatsUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Submit N sample jobs now and print their ids.

    Each is one `sum` of two small random numbers, as the original control plane's admin
    population made them."""
    from jobstream.cli._populate import populate as submit_samples
    from jobstream.cli._populate import sample_plans
    from jobstream.cli._submit import no_worker_warning
    from jobstream.services.worker import HandlerRegistry

    try:
        plans = sample_plans(HandlerRegistry.default(), count, queue=queue, rng=random.Random(seed))
        endpoints = resolve_endpoints(nats_url, None, data_dir, need_database=False)
    except JobstreamError as exc:
        usage_error(str(exc))

    async def main() -> tuple[list[str], bool]:
        async with bus_session(
            endpoints.nats_urls, name="jobstream-populate", security=nats_security
        ) as bus:
            return await submit_samples(bus, plans, queue=queue)

    job_ids, no_worker = run(main())
    if no_worker:
        typer.echo(no_worker_warning(queue), err=True)
    if as_json:
        typer.echo(json.dumps({"job_ids": job_ids}))
    else:
        typer.echo("\n".join(job_ids))
