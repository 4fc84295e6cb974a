"""The NDJSON projector: one line per finished task in `results-YYYY-MM-DD.ndjson` files.

A line carries its event's stream sequence, and that is the whole checkpoint. A
`task.chunk_finished` makes one line per task that succeeded, all of its sequence and its
day; when there are several, each says which `part` of how many `parts` it is. Lines are
written in sequence order (a file is flushed and synced before the next one is written),
so the lines on disk are always a prefix of the log's lines, at worst followed by one torn
line. On start the projector truncates torn or undecodable last lines, and the lines of a
last event whose last part is missing, then resumes after the highest sequence left: after
a crash at any point no line is lost and none is doubled.
"""

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from jobstream.events import (
    DEFAULT_BATCH_MAX,
    TASK_EVENT_SUBJECTS,
    TASK_SUBJECT_PREFIX,
    BatchSource,
    Bus,
    JobstreamError,
    SourceItem,
    TaskChunkFinished,
    TaskDeadLettered,
    TaskSucceeded,
    backoff_s,
    chunk_task_events,
    encode_into,
    event_batches,
    sleep_unless_stopped,
)
from jobstream.projections._rules import Result, result_of, utc

log = logging.getLogger(__name__)

FILE_PREFIX = "results-"
FILE_SUFFIX = ".ndjson"
LOCK_FILE = ".ndjson-projector.lock"
READ_CHUNK = 64 * 1024
RETRY_CAP_S = 5.0


class ResultLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One finished task: a line of a results file."""

    seq: int
    at: datetime
    job_id: str
    task_id: str
    kind: str
    status: str  # succeeded | dead_lettered
    inputs: dict[str, Any]
    output: Any
    worker_id: str
    attempts: int
    duration_s: float | None
    error: str | None
    # This line's place (from 1) among the lines of its event; omitted when it is alone.
    part: int | None = None
    parts: int | None = None


class _Tail(msgspec.Struct):
    """What recovery reads of a line (a line alone is part 1 of 1)."""

    seq: int
    part: int = 1
    parts: int = 1


_tail_decoder = msgspec.json.Decoder(_Tail)


def partition_path(results_dir: Path, at: datetime) -> Path:
    """The file of the UTC day of `at`."""
    return results_dir / f"{FILE_PREFIX}{utc(at).date().isoformat()}{FILE_SUFFIX}"


def result_lines(item: SourceItem) -> list[ResultLine]:
    """The lines of `item`: that of a finished task, or one per task of a chunk that
    succeeded, numbered when there are several; none for other items."""
    if type(item.event) is not TaskChunkFinished:
        line = result_line(item)
        return [] if line is None else [line]
    succeeded = [e for e in chunk_task_events(item.event) if isinstance(e, TaskSucceeded)]
    if len(succeeded) == 1:
        return [_line(result_of(item.seq, succeeded[0]))]
    return [
        _line(result_of(item.seq, event), part=part, parts=len(succeeded))
        for part, event in enumerate(succeeded, start=1)
    ]


def _line(result: Result, *, part: int | None = None, parts: int | None = None) -> ResultLine:
    """The line of a result: the rule of `_rules.result_of` (the `results` view shows alike)."""
    return ResultLine(
        seq=result.seq,
        at=result.at,
        job_id=result.job_id,
        task_id=result.task_id,
        kind=result.kind,
        status=result.status,
        inputs=result.inputs,
        output=result.output,
        worker_id=result.worker_id,
        attempts=result.attempts,
        duration_s=result.duration_s,
        error=result.error,
        part=part,
        parts=parts,
    )


def result_line(item: SourceItem) -> ResultLine | None:
    """The line of a `task.succeeded` or `task.dead_lettered` event; None for other items
    (a `task.chunk_finished` makes several: `result_lines`)."""
    if isinstance(item.event, TaskSucceeded | TaskDeadLettered):
        return _line(result_of(item.seq, item.event))
    return None


# --- recovery ------------------------------------------------------------------------------


def partition_files(results_dir: Path) -> list[Path]:
    return sorted(results_dir.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"))


def _newline_before(f: BinaryIO, end: int) -> int:
    """The position of the last b"\\n" in the file before `end`, or -1."""
    pos = end
    while pos > 0:
        start = max(0, pos - READ_CHUNK)
        f.seek(start)
        found = f.read(pos - start).rfind(b"\n")
        if found >= 0:
            return start + found
        pos = start
    return -1


def _decode_tail(line: bytes) -> _Tail | None:
    try:
        return _tail_decoder.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _last_seq(f: BinaryIO, *, repair: bool) -> int:
    """The seq of the last event whose lines are all whole and decodable (0: none), reading
    backwards from the end.

    With `repair`, what follows them (a torn or undecodable tail, the first parts only of
    the last event's lines) is truncated.
    """
    end = f.seek(0, os.SEEK_END)
    size = end
    seq: int | None = None
    incomplete: int | None = None  # an event whose last part is missing
    while end > 0 and seq is None:
        newline = _newline_before(f, end)
        if newline != end - 1:  # a last line without its newline: torn
            end = newline + 1
            continue
        start = _newline_before(f, newline) + 1
        f.seek(start)
        tail = _decode_tail(f.read(newline - start))
        if tail is None or tail.seq == incomplete:
            end = start
        elif tail.part < tail.parts:
            incomplete = tail.seq
            end = start
        else:
            seq = tail.seq
    if repair and end < size:
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
        log.warning("%s: truncated %d bytes of an unfinished last write", f.name, size - end)
    return seq or 0


def last_written_seq(results_dir: Path) -> int:
    """The highest stream sequence whose lines are all in the results files (0: none).
    Reads only."""
    last = 0
    for path in partition_files(results_dir):
        with path.open("rb") as f:
            last = max(last, _last_seq(f, repair=False))
    return last


def repair_partitions(results_dir: Path) -> int:
    """Truncate torn last lines of the results files, and the lines of an event only some
    of whose lines were written; return `last_written_seq`."""
    last = 0
    for path in partition_files(results_dir):
        with path.open("r+b") as f:
            last = max(last, _last_seq(f, repair=True))
    return last


# --- writing -------------------------------------------------------------------------------


class PartitionWriter:
    """Appends lines to the day files, in order, syncing each file it leaves or finishes."""

    def __init__(self, results_dir: Path) -> None:
        self.results_dir = results_dir
        self._files: dict[Path, BinaryIO] = {}
        self._buffer = bytearray()

    def write(self, lines: Sequence[ResultLine]) -> None:
        """Append `lines` (in seq order) and make them durable."""
        touched: list[Path] = []
        for path, group in _runs(self.results_dir, lines):
            if touched:  # leaving a file: what is written there must precede what follows
                self._sync(touched[-1])
            buffer = self._buffer
            buffer.clear()
            for line in group:
                encode_into(line, buffer, -1)
                buffer.extend(b"\n")
            f = self._file(path)
            f.write(buffer)
            f.flush()
            touched.append(path)
        if touched:
            self._sync(touched[-1])

    def _file(self, path: Path) -> BinaryIO:
        f = self._files.get(path)
        if f is None:
            for old in list(self._files.values()):  # one day at a time is the usual case
                old.close()
            self._files.clear()
            f = self._files[path] = path.open("ab")
        return f

    def _sync(self, path: Path) -> None:
        os.fsync(self._files[path].fileno())

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def _runs(
    results_dir: Path, lines: Sequence[ResultLine]
) -> Iterator[tuple[Path, list[ResultLine]]]:
    """Consecutive lines grouped by file (UTC day), in order."""
    group: list[ResultLine] = []
    day: date | None = None
    for line in lines:
        line_day = utc(line.at).date()
        if line_day != day and group:
            yield partition_path(results_dir, group[0].at), group
            group = []
        day = line_day
        group.append(line)
    if group:
        yield partition_path(results_dir, group[0].at), group


@contextlib.contextmanager
def exclusive_results_dir(results_dir: Path) -> Iterator[None]:
    """One writer per results directory: a second one would double lines."""
    with (results_dir / LOCK_FILE).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise JobstreamError(f"another NDJSON projector writes to {results_dir}") from exc
        yield


class NdjsonProjector:
    """Writes the results of `evt.task.>` to `results_dir`, resuming after its last line.

    `source`: where the log is read (`events.SharedSource.batches`, a read shared with the
    process's Postgres projector); by default, a reader of the task events of its own."""

    def __init__(
        self,
        bus: Bus,
        results_dir: Path,
        *,
        batch_max: int = DEFAULT_BATCH_MAX,
        source: BatchSource | None = None,
    ) -> None:
        self.bus = bus
        self.results_dir = results_dir
        self.source: BatchSource = source or functools.partial(
            event_batches, bus, filter_subject=TASK_EVENT_SUBJECTS, batch_max=batch_max
        )
        self.last_seq = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Project until `stop` is set. A failed write restarts from the files' last line."""
        self.results_dir.mkdir(parents=True, exist_ok=True)
        attempt = 0
        with exclusive_results_dir(self.results_dir):
            while not stop.is_set():
                try:
                    await self._project(stop)
                except OSError as exc:
                    attempt += 1
                    log.error("writing results to %s: %s, retry %d", self.results_dir, exc, attempt)
                    await sleep_unless_stopped(stop, backoff_s(attempt, cap_s=RETRY_CAP_S))

    async def _project(self, stop: asyncio.Event) -> None:
        start = await asyncio.to_thread(repair_partitions, self.results_dir)
        self.last_seq = start
        log.info("ndjson results in %s: resuming after seq %d", self.results_dir, start)
        writer = PartitionWriter(self.results_dir)
        batches = self.source(start_seq=start + 1, stop=stop)
        try:
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    await self._write_batch(writer, batch)
        finally:
            writer.close()

    async def _write_batch(self, writer: PartitionWriter, items: Sequence[SourceItem]) -> None:
        lines: list[ResultLine] = []
        for item in items:
            # (A shared read brings every event; the others' are the Postgres projector's.)
            if item.error is not None and item.subject.startswith(TASK_SUBJECT_PREFIX):
                log.warning("skipped seq %d on %s: %s", item.seq, item.subject, item.error)
            lines += result_lines(item)
        if lines:
            await _in_thread_to_the_end(writer.write, lines)
        if items:
            self.last_seq = items[-1].seq


async def _in_thread_to_the_end(
    write: Callable[[list[ResultLine]], None], lines: list[ResultLine]
) -> None:
    """Run `write` in a thread; if cancelled, still wait for it before the files get closed."""
    writing = asyncio.ensure_future(asyncio.to_thread(write, lines))
    try:
        await asyncio.shield(writing)
    except asyncio.CancelledError:
        while not writing.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({writing})
        if not writing.cancelled() and writing.exception() is not None:
            log.error("writing results while cancelled: %s", writing.exception())
        raise
