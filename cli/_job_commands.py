"""`jobstream submit`, `watch` and `cancel`: a job's write side, and following it to its end."""

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from jobstream.cli._nats_security import nats_security_options
from jobstream.cli._runtime import (
    bus_session,
    run,
    usage_error,
)
from jobstream.cli._settings import (
    DEFAULT_DATA_DIR,
    DataDirOption,
    NatsUrlOption,
    QueueOption,
    checked,
    resolve_endpoints,
)
from jobstream.events import (
    MAX_TASKS_PER_JOB,
    NO_SECURITY,
    JobstreamError,
    NameKind,
    NatsSecurity,
)

if TYPE_CHECKING:
    from jobstream.cli._submit import SubmitOutcome
from jobstream.cli._settings import HandlerOption


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
    labels: Annotated[
        list[str] | None,
        typer.Option("--label", help="KEY=VALUE on the job, to find it by (repeatable)."),
    ] = None,
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
    from jobstream.cli._labels import parse_labels
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
            labels=parse_labels(labels or []),
        )
        endpoints = resolve_endpoints(nats_url, None, data_dir, need_database=False)
    except JobstreamError as exc:
        usage_error(str(exc))

    async def main() -> "SubmitOutcome":
        async with bus_session(
            endpoints.nats_urls, name="jobstream-submit", security=nats_security
        ) as bus:
            return await submit_planned(bus, plan, show_progress=sys.stderr.isatty())

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
    """Follow a job to its end with a live progress bar; exit 1 unless all succeeded.

    On a terminal the bar shows the rate and the time left; the job's summary follows."""
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
        async with bus_session(
            endpoints.nats_urls, name="jobstream-cancel", security=nats_security
        ) as bus:
            await cancel_job(bus, job_id, reason=reason)

    run(main())
    typer.echo(f"job {job_id} cancelled")
