"""`jobstream events`: the log itself, as it happens (`tail`) or one job's history (`show`),
printed one line per event for a person, or as NDJSON (`--json`) for a program."""

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated

import msgspec
import typer

from cli._nats_security import nats_security_options
from cli._runtime import bus_session, run
from cli._settings import DEFAULT_DATA_DIR, DataDirOption, NatsUrlOption, checked, resolve_endpoints
from events import (
    EVENT_SUBJECTS,
    NO_SECURITY,
    Bus,
    JobstreamError,
    NameKind,
    NatsSecurity,
    SourceItem,
    event_batches,
    job_subject,
    job_task_events_subject,
)

events_app = typer.Typer(
    name="events",
    help="The event log: follow it live, or print one job's history.",
    no_args_is_help=True,
)

NAME = "jobstream-events"
# Fields every event has, left out of the one-line form (shown in their own columns).
_COMMON_FIELDS = frozenset({"type", "id", "at"})
# The one-line form keeps a line to about a terminal's width.
MAX_DETAIL_CHARS = 160

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
    wanted = _type_filter(event_type)
    endpoints = resolve_endpoints(nats_url, None, data_dir, need_database=False)
    print_item = _printer(as_json)

    async def main() -> None:
        async with bus_session(endpoints.nats_urls, name=NAME, security=nats_security) as bus:
            start = max(1, await bus.stream_last_seq() + 1 - last)
            await _print_from(bus, subjects, start, wanted, print_item, until_seq=None)

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
    wanted = _type_filter(event_type)
    endpoints = resolve_endpoints(nats_url, None, data_dir, need_database=False)
    print_item = _printer(as_json)

    async def main() -> None:
        async with bus_session(endpoints.nats_urls, name=NAME, security=nats_security) as bus:
            first = await bus.first_on_subject(job_subject(job_id))
            if first is None:
                raise JobstreamError(f"job {job_id} is not in the log")
            subjects = [job_subject(job_id), job_task_events_subject(job_id)]
            lasts = [await bus.last_on_subject(subject) for subject in subjects]
            until = max(position[0] for position in lasts if position is not None)
            await _print_from(bus, subjects, first[0], wanted, print_item, until_seq=until)

    run(main())


def _type_filter(types: list[str] | None) -> Callable[[str], bool]:
    if not types:
        return lambda _: True
    exact = {t for t in types if not t.endswith("*")}
    prefixes = tuple(t[:-1] for t in types if t.endswith("*"))
    return lambda name: name in exact or name.startswith(prefixes)


def _printer(as_json: bool) -> Callable[[SourceItem], None]:
    out = sys.stdout

    def as_line(item: SourceItem) -> None:
        out.write(format_line(item) + "\n")
        out.flush()

    def as_ndjson(item: SourceItem) -> None:
        out.write(item.data.decode("utf-8", "replace").rstrip("\n") + "\n")
        out.flush()

    return as_ndjson if as_json else as_line


def format_line(item: SourceItem) -> str:
    """`seq  time  type  subject  details` for a person; what could not be read, said so."""
    if item.event is None:
        return f"{item.seq:>9}  {'?':<23}  {'(not an event)':<20}  {item.subject}  {item.error}"
    fields = msgspec.to_builtins(item.event)
    name = str(fields.get("type", "?"))
    at = item.event.at.astimezone(UTC) if item.event.at.tzinfo else item.event.at
    details = {key: value for key, value in fields.items() if key not in _COMMON_FIELDS}
    text = json.dumps(details, separators=(",", ":"), ensure_ascii=False, default=str)
    if len(text) > MAX_DETAIL_CHARS:
        text = text[: MAX_DETAIL_CHARS - 1] + "…"
    return f"{item.seq:>9}  {_time(at)}  {name:<20}  {text}"


def _time(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


async def _print_from(
    bus: Bus,
    subjects: Sequence[str],
    start_seq: int,
    wanted: Callable[[str], bool],
    print_item: Callable[[SourceItem], None],
    *,
    until_seq: int | None,
) -> None:
    """Print the events on `subjects` from `start_seq`, up to `until_seq` (None: forever)."""
    if until_seq is not None and until_seq < start_seq:
        return
    stop = asyncio.Event()
    batches = event_batches(bus, start_seq=start_seq, stop=stop, filter_subject=list(subjects))
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for item in batch:
                if until_seq is not None and item.seq > until_seq:
                    return
                name = type(item.event).__struct_config__.tag if item.event is not None else ""
                if item.event is None or wanted(str(name)):
                    print_item(item)
            if until_seq is not None and batch[-1].seq >= until_seq:
                return
