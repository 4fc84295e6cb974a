"""`jobstream events`: the log itself, as it happens (`tail`) or one job's history (`show`),
printed one line per event for a person, or as NDJSON (`--json`) for a program."""

import contextlib
from typing import Annotated

import typer

from jobstream.cli._nats_security import nats_security_options
from jobstream.cli._runtime import bus_session, run
from jobstream.cli._settings import (
    DEFAULT_DATA_DIR,
    DataDirOption,
    NatsUrlOption,
    checked,
    resolve_endpoints,
)
from jobstream.events import (
    EVENT_SUBJECTS,
    NO_SECURITY,
    JobstreamError,
    NameKind,
    NatsSecurity,
    job_subject,
    job_task_events_subject,
    overlapping,
    stored_patterns,
)

events_app = typer.Typer(
    name="events",
    help="The event log: follow it live, or print one job's history.",
    no_args_is_help=True,
)

NAME = "jobstream-events"

TypeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--type",
        help="Only events of this type (job.submitted, task.failed, ...; a trailing * matches"
        " a prefix: task.*). Repeatable.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="NDJSON: each event as it is in the log.")]


@events_app.command("tail")
@nats_security_options
def tail(
    subject: Annotated[
        list[str] | None,
        typer.Option(
            "--subject",
            help="Only events on subjects matching this NATS pattern (evt.job.>, evt.task.JOB.>,"
            " evt.worker.*). Repeatable. Default: the whole log.",
        ),
    ] = None,
    event_type: TypeOption = None,
    last: Annotated[
        int, typer.Option(min=0, help="Start this many events back in the log (0: new ones).")
    ] = 0,
    as_json: JsonOption = False,
    nats_url: NatsUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Follow the event log live, until interrupted (Ctrl-C)."""
    subjects = subject or [EVENT_SUBJECTS]
    for pattern in subjects:
        if not pattern.startswith("evt.") or " " in pattern:
            raise typer.BadParameter(f"--subject {pattern!r}: an events subject starts with evt.")
    # A task event is stored with its job's bucket after its subject (README, "Partitioned
    # projection"): a pattern of task subjects is given the bucket token too.
    filters = stored_patterns(subjects)
    if (pair := overlapping(filters)) is not None:
        raise typer.BadParameter(
            f"--subject {pair[0]!r} and {pair[1]!r} overlap (a subject matches both): give"
            " patterns that do not, or one that takes both"
        )
    from jobstream.cli._event_log import print_from, printer, type_filter

    wanted = type_filter(event_type)
    endpoints = resolve_endpoints(nats_url, None, data_dir, need_database=False)
    print_item = printer(as_json)

    async def main() -> None:
        async with bus_session(endpoints.nats_urls, name=NAME, security=nats_security) as bus:
            start = max(1, await bus.stream_last_seq() + 1 - last)
            await print_from(bus, filters, start, wanted, print_item, until_seq=None)

    with contextlib.suppress(KeyboardInterrupt):
        run(main())


@events_app.command("show")
@nats_security_options
def show(
    job_id: Annotated[
        str,
        typer.Argument(help="The job whose history to print.", callback=checked(NameKind.JOB_ID)),
    ],
    event_type: TypeOption = None,
    as_json: JsonOption = False,
    nats_url: NatsUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    """Print a job's history from the log, in order: the job's events and its tasks'."""
    from jobstream.cli._event_log import print_from, printer, type_filter

    wanted = type_filter(event_type)
    endpoints = resolve_endpoints(nats_url, None, data_dir, need_database=False)
    print_item = printer(as_json)

    async def main() -> None:
        async with bus_session(endpoints.nats_urls, name=NAME, security=nats_security) as bus:
            first = await bus.first_on_subject(job_subject(job_id))
            if first is None:
                raise JobstreamError(f"job {job_id} is not in the log")
            subjects = [job_subject(job_id), job_task_events_subject(job_id)]
            lasts = [await bus.last_on_subject(subject) for subject in subjects]
            until = max(position[0] for position in lasts if position is not None)
            await print_from(bus, subjects, first[0], wanted, print_item, until_seq=until)

    run(main())
