"""The event log printed for `jobstream events`: which events, and how each looks."""

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import msgspec

from jobstream.events import Bus, SourceItem, event_batches

# Fields every event has, left out of the one-line form (shown in their own columns).
_COMMON_FIELDS = frozenset({"type", "id", "at"})
# The one-line form keeps a line to about a terminal's width.
MAX_DETAIL_CHARS = 160


def type_filter(types: list[str] | None) -> Callable[[str], bool]:
    if not types:
        return lambda _: True
    exact = {t for t in types if not t.endswith("*")}
    prefixes = tuple(t[:-1] for t in types if t.endswith("*"))
    return lambda name: name in exact or name.startswith(prefixes)


def printer(as_json: bool) -> Callable[[SourceItem], None]:
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


async def print_from(
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
