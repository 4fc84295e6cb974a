"""What every fault test needs: real `jobstream` processes that are always killed, bounded
waits, and a complete read of the log to check the one invariant that matters most (each
task ends exactly once).

Every process is started as `python -m jobstream.cli ...` in the test's own process group (so an
interrupted run takes them along), with its output in a file under the test's tmp dir; the
files are printed when the test fails inside `Processes`.
"""

import asyncio
import contextvars
import json
import os
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import asyncpg
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from jobstream.events import (
    EVENTS_STREAM,
    TASKS_STREAM,
    TERMINAL_TASK_EVENTS,
    Bus,
    DecodeError,
    Event,
    JobCompleted,
    JobFailed,
    JobRejected,
    TaskCancelled,
    TaskChunkFinished,
    TaskDeadLettered,
    TaskSucceeded,
    combined_checkpoints,
    decode_event,
    is_transient,
    job_subject,
    task_id_for,
    worker_consumer_name,
    worker_subject,
)

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
JOBSTREAM = [sys.executable, "-m", "jobstream.cli"]
# Short leases keep each fault test to seconds: a lost lease comes back after this long.
LEASE_S = 1.5
CLI_TIMEOUT_S = 60.0
POLL_S = 0.1
KILL_WAIT_S = 10.0
LOG_TAIL_CHARS = 6000
READ_BATCH = 1000
READ_TIMEOUT_S = 60.0

TerminalEvent = TaskSucceeded | TaskDeadLettered | TaskCancelled | TaskChunkFinished

# The open `Processes` block, whose children `wait_for` watches.
_active: contextvars.ContextVar["Processes | None"] = contextvars.ContextVar(
    "active_processes", default=None
)


# --- processes -----------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    # Signalled to die by the test: its exit is expected.
    doomed: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def send(self, signum: signal.Signals) -> None:
        if signum in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            self.doomed = True
        if self.running:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL (a stopped process dies too) and reap."""
        self.doomed = True
        if self.running:
            self.process.kill()
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(KILL_WAIT_S)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _child_environment() -> dict[str, str]:
    """The test's environment without JOBSTREAM_* settings: flags say everything."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("JOBSTREAM_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Processes:
    """`python -m jobstream.cli` children of one test. On exit every one still running is killed;
    if the block failed, the tail of each child's output (and of any watched server log)
    is printed, which pytest shows with the failure. While the block is open, `wait_for`
    fails at once if a child the test did not kill exits."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []
        self._watched: dict[str, Path] = {}
        self._token: contextvars.Token[Processes | None] | None = None

    def __enter__(self) -> "Processes":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._token = _active.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _active.reset(self._token)
        self.kill_all()
        if exc_type is not None:
            print(self.report())

    def start(self, name: str, *args: str) -> Child:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [*JOBSTREAM, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=_child_environment(),
            )
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def worker(
        self,
        name: str,
        nats_url: str,
        *,
        data_dir: Path,
        lease_s: float = LEASE_S,
        concurrency: int = 8,
        extra: Sequence[str] = (),
    ) -> Child:
        """A worker whose id is `name`, so the log can be read by worker."""
        return self.start(
            name,
            "worker",
            "--nats-url",
            nats_url,
            "--data-dir",
            str(data_dir),
            "--worker-id",
            name,
            "--lease-s",
            str(lease_s),
            "--concurrency",
            str(concurrency),
            *extra,
        )

    def dispatcher(self, nats_url: str, *, data_dir: Path, lease_s: float = LEASE_S) -> Child:
        return self.start(
            "dispatcher",
            "dispatcher",
            "--nats-url",
            nats_url,
            "--data-dir",
            str(data_dir),
            "--lease-s",
            str(lease_s),
        )

    def projector(
        self,
        nats_url: str,
        *,
        database_url: str,
        data_dir: Path,
        partition: int = 0,
        partitions: int = 1,
    ) -> Child:
        return self.start(
            "projector" if partitions == 1 else f"projector-{partition}-of-{partitions}",
            "projector",
            "--nats-url",
            nats_url,
            "--database-url",
            database_url,
            "--data-dir",
            str(data_dir),
            "--partitions",
            str(partitions),
            "--partition",
            str(partition),
        )

    def watch(self, name: str, path: Path) -> None:
        """Also print `path` (a server's log) if the test fails."""
        self._watched[name] = path

    def assert_running(self, *children: Child) -> None:
        """The given children (default: all not killed by the test) are still running."""
        for child in children or [c for c in self.children if not c.doomed]:
            code = child.process.poll()
            assert code is None, f"{child.name} exited with {code}:\n{_tail(child.log_text())}"

    def kill_all(self) -> None:
        for child in self.children:
            with suppress(ProcessLookupError):
                child.kill()

    def report(self) -> str:
        parts = [
            f"===== {c.name} (pid {c.pid}) =====\n{_tail(c.log_text())}" for c in self.children
        ]
        for name, path in self._watched.items():
            with suppress(OSError):
                parts.append(f"===== {name} =====\n{_tail(path.read_text(errors='replace'))}")
        return "\n".join(parts)


def _tail(text: str) -> str:
    return text if len(text) <= LOG_TAIL_CHARS else "...\n" + text[-LOG_TAIL_CHARS:]


async def jobstream(*args: str, timeout_s: float = CLI_TIMEOUT_S) -> str:
    """Run one `jobstream` command to its end; its stdout, or an assertion with its stderr."""
    process = await asyncio.create_subprocess_exec(
        *JOBSTREAM,
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=_child_environment(),
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, f"jobstream {' '.join(args)}: {stderr.decode()}"
    return stdout.decode()


async def submit(nats_url: str, data_dir: Path, *args: str) -> str:
    """`jobstream submit ... --json`; the job id."""
    out = await jobstream(
        "submit", "--nats-url", nats_url, "--data-dir", str(data_dir), "--json", *args
    )
    job_id: str = json.loads(out)["job_id"]
    return job_id


# --- waiting -------------------------------------------------------------------------


async def wait_for(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = POLL_S,
) -> T:
    """Call `probe` until it returns something truthy, and return that; a transient NATS
    error (a server restarting, a leader election) counts as "not yet"."""

    processes = _active.get()

    async def poll() -> T:
        while True:
            if processes is not None:
                processes.assert_running()
            try:
                value = await probe()
            except Exception as exc:
                if not is_transient(exc):
                    raise
            else:
                if value:
                    return value
            await asyncio.sleep(interval_s)

    try:
        return await asyncio.wait_for(poll(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}") from None


@asynccontextmanager
async def connected(urls: Sequence[str], *, name: str = "fault-test") -> AsyncIterator[Bus]:
    bus = await Bus.connect(urls, name=name)
    try:
        yield bus
    finally:
        with suppress(Exception):
            await asyncio.wait_for(bus.close(), 10)


async def job_end(bus: Bus, job_id: str) -> JobCompleted | JobFailed | JobRejected | None:
    """The job's ending event, if the dispatcher has written it (a direct get, cheap)."""
    last = await bus.last_on_subject(job_subject(job_id))
    if last is not None and isinstance(last[1], JobCompleted | JobFailed | JobRejected):
        return last[1]
    return None


async def wait_for_job_end(
    bus: Bus, job_id: str, *, timeout_s: float
) -> JobCompleted | JobFailed | JobRejected:
    return await wait_for(
        lambda: job_end(bus, job_id), timeout_s=timeout_s, what=f"the end of job {job_id}"
    )


async def wait_for_worker_started(bus: Bus, *worker_ids: str, timeout_s: float = 30) -> None:
    async def started() -> bool:
        for worker_id in worker_ids:
            if await bus.last_on_subject(worker_subject(worker_id)) is None:
                return False
        return True

    await wait_for(started, timeout_s=timeout_s, what=f"workers {', '.join(worker_ids)} to start")


async def tasks_left(bus: Bus) -> int:
    """Messages still in the work queue (a WorkQueue stream deletes a message on its ack)."""
    info = await bus.js.stream_info(TASKS_STREAM)
    return info.state.messages


async def queue_settled(bus: Bus, queue: str = "default") -> bool:
    """Nothing in the queue, nothing pending on its consumer, nothing waiting for an ack."""
    consumer = await bus.js.consumer_info(TASKS_STREAM, worker_consumer_name(queue))
    return (
        await tasks_left(bus) == 0 and consumer.num_pending == 0 and consumer.num_ack_pending == 0
    )


# --- the log -------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    seq: int
    subject: str
    data: bytes
    event: Event | None


async def read_log(bus: Bus, *, timeout_s: float = READ_TIMEOUT_S) -> list[Entry]:
    """Every message of the events stream, in order, checked to have no hole: the
    invariants below are only as good as a complete read.

    Independent of the product's readers on purpose: an ephemeral consumer without acks,
    read again from the start if a delivery went missing.
    """

    async def complete() -> list[Entry]:
        while True:
            try:
                entries = await _read_once(bus)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                entries = None
            if entries is not None:
                return entries
            await asyncio.sleep(0.5)

    try:
        return await asyncio.wait_for(complete(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"could not read the whole log in {timeout_s:.0f}s") from None


async def _read_once(bus: Bus) -> list[Entry] | None:
    """The whole log, or None if a message went missing on the way."""
    last_seq = (await bus.js.stream_info(EVENTS_STREAM)).state.last_seq
    if last_seq == 0:
        return []
    psub = await bus.js.pull_subscribe(
        "evt.>",
        durable=None,
        stream=EVENTS_STREAM,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=10.0,
        ),
    )
    entries: list[Entry] = []
    try:
        while len(entries) < last_seq:
            try:
                messages = await psub.fetch(READ_BATCH, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                return None
            for msg in messages:
                seq = msg.metadata.sequence.stream
                if seq != len(entries) + 1:
                    return None  # a hole: a lost delivery
                entries.append(Entry(seq, msg.subject, msg.data, _decode(msg.data)))
    finally:
        with suppress(Exception):
            await psub.unsubscribe()
    return entries


def _decode(data: bytes) -> Event | None:
    try:
        return decode_event(data)
    except DecodeError:
        return None


def events_of(entries: Iterable[Entry]) -> Iterator[Event]:
    return (entry.event for entry in entries if entry.event is not None)


def terminal_events(entries: Iterable[Entry]) -> dict[str, list[TerminalEvent]]:
    """Terminal events by task id, across the whole log."""
    by_task: dict[str, list[TerminalEvent]] = defaultdict(list)
    for event in events_of(entries):
        if isinstance(event, TERMINAL_TASK_EVENTS):
            by_task[event.task_id].append(event)
    return by_task


def assert_no_task_ended_twice(entries: Iterable[Entry]) -> None:
    """The log-wide invariant: never two terminal events for one task."""
    twice = {task: ends for task, ends in terminal_events(entries).items() if len(ends) > 1}
    assert not twice, f"tasks with more than one terminal event: {twice}"


def assert_each_task_ended_once(
    entries: Sequence[Entry], job_id: str, total: int
) -> dict[str, TerminalEvent]:
    """Every task of the job has exactly one terminal event, and the job has no others.
    Returns each task's terminal event."""
    assert_no_task_ended_twice(entries)
    ends = {
        task: found[0]
        for task, found in terminal_events(entries).items()
        if found[0].job_id == job_id
    }
    expected = {task_id_for(job_id, index) for index in range(total)}
    missing = sorted(expected - set(ends))
    assert not missing, f"{len(missing)} tasks never ended, e.g. {missing[:5]}"
    assert set(ends) == expected, f"unexpected task ids: {sorted(set(ends) - expected)[:5]}"
    return ends


def seconds_since(moment: float, event: Event) -> float:
    """How long after the wall-clock `moment` (time.time()) the event was written."""
    return event.at.timestamp() - moment


# --- the read model ------------------------------------------------------------------


async def projected_up_to(database_url: str, seq: int, *, schema: str = "jobstream") -> bool:
    """Whether the Postgres projection (every partition of it) applied the log up to `seq`."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            f"SELECT projection, last_seq FROM {schema}.projection_checkpoints"
            " WHERE projection = 'postgres' OR projection LIKE 'postgres/%'"
        )
    except asyncpg.UndefinedTableError:
        return False
    finally:
        await conn.close()
    checkpoints = {row["projection"]: row["last_seq"] for row in rows}
    return combined_checkpoints(checkpoints).get("postgres", 0) >= seq


async def wait_until_projected(bus: Bus, database_url: str, *, timeout_s: float) -> int:
    """Wait until the Postgres projector has applied the whole log; its last sequence."""
    last = await bus.stream_last_seq()

    async def probe() -> bool:
        return await projected_up_to(database_url, last)

    await wait_for(probe, timeout_s=timeout_s, what=f"the projector to reach seq {last}")
    return last


async def query(database_url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


def ndjson_task_counts(results_dir: Path, job_id: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in results_dir.glob("results-*.ndjson"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["job_id"] == job_id:
                counts[row["task_id"]] += 1
    return counts


async def log_contains(child: Child, text: str, times: int = 1) -> bool:
    """Whether the child's output holds `text` at least `times` times (a probe for wait_for)."""
    return child.log_text().count(text) >= times
