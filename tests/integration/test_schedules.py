"""Schedules against a real nats-server: the server fires them, real dispatcher processes
turn each tick into one job, across a SIGKILL and restart and with two dispatchers at once;
`schedule add/list/rm` and `populate` from the command line; foreign ticks set aside."""

import asyncio
import dataclasses
import functools
import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import nats.js.errors
from typer.testing import CliRunner, Result

from jobstream.cli._schedules import JobTemplate, add_schedule, plan_schedule
from jobstream.cli.app import app
from jobstream.events import (
    SCHEDULE_LABEL,
    SCHEDULE_TICKS_CONSUMER,
    SCHEDULES_STREAM,
    Bus,
    Header,
    JobSubmitted,
    Schedule,
    ensure_buckets,
    ensure_schedules,
    ensure_streams,
    is_transient,
    schedule_subject,
    schedule_tick_subject,
    tick_job_id,
)
from jobstream.services.dispatcher import Dispatcher
from jobstream.services.dispatcher._schedules import ScheduleFirer
from jobstream.services.worker import HandlerRegistry
from tests.faults._harness import Processes, connected, log_contains, read_log, wait_for
from tests.integration.test_worker_dispatcher import running

PERIOD_S = 2
TICK_SUBMITTED_BY = re.compile(r"schedule (?P<name>\S+) tick (?P<seq>\d+)")


NOOP_JOB = JobTemplate(
    kind="noop",
    args="{}",
    count=1,
    queue="default",
    priority=0,
    max_attempts=None,
    timeout_s=None,
    job_name="",
    labels=[],
)


async def add(bus: Bus, name: str, interval: str) -> Schedule:
    schedule = plan_schedule(
        HandlerRegistry.default(), name, every=interval, cron=None, job=NOOP_JOB
    )
    await add_schedule(bus, schedule)
    return schedule


async def scheduled_jobs(bus: Bus, name: str) -> list[JobSubmitted]:
    """The `job.submitted` events of schedule `name`, in log order."""
    return [
        entry.event
        for entry in await read_log(bus)
        if isinstance(entry.event, JobSubmitted) and entry.event.labels.get(SCHEDULE_LABEL) == name
    ]


async def jobs_at_least(bus: Bus, name: str, count: int) -> bool:
    return len(await scheduled_jobs(bus, name)) >= count


async def every_tick_has_its_job(bus: Bus, name: str, ticks: "TickWatch") -> bool:
    made = {tick_of(job) for job in await scheduled_jobs(bus, name)}
    return set(ticks.fired) <= made


def tick_of(job: JobSubmitted) -> int:
    match = TICK_SUBMITTED_BY.fullmatch(job.submitted_by)
    assert match is not None, job.submitted_by
    return int(match["seq"])


class TickWatch:
    """Every tick the server writes for a schedule, read as they come (the stream keeps only
    the latest few per schedule)."""

    def __init__(self, bus: Bus, name: str) -> None:
        self.bus = bus
        self.subject = schedule_tick_subject(name)
        self.fired: dict[int, datetime] = {}
        self._next_seq = 1

    async def poll(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.read()
            except Exception as exc:  # a server restarting: read again later
                if not is_transient(exc):
                    raise
            await asyncio.sleep(0.3)

    async def read(self) -> None:
        while True:
            try:
                message = await self.bus.js.get_msg(
                    SCHEDULES_STREAM, seq=self._next_seq, subject=self.subject, next=True
                )
            except nats.js.errors.NotFoundError:
                return
            assert message.seq is not None and message.time is not None
            self.fired[message.seq] = message.time
            self._next_seq = message.seq + 1


def assert_one_job_per_tick(jobs: list[JobSubmitted], ticks: dict[int, datetime]) -> None:
    per_tick = Counter(tick_of(job) for job in jobs)
    twice = {tick: n for tick, n in per_tick.items() if n > 1}
    assert not twice, f"ticks with more than one job: {twice}"
    assert len({job.job_id for job in jobs}) == len(jobs)
    assert set(per_tick) == set(ticks), (
        f"ticks without a job: {sorted(set(ticks) - set(per_tick))}; "
        f"jobs without a tick: {sorted(set(per_tick) - set(ticks))}"
    )


def assert_every_period(ticks: dict[int, datetime]) -> None:
    """Consecutive ticks one period apart: none missed, none doubled (a late tick, on a busy
    machine, still counts for its period)."""
    times = [ticks[seq] for seq in sorted(ticks)]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
    assert [round(gap / PERIOD_S) for gap in gaps] == [1] * len(gaps), gaps


async def test_every_2s_fires_once_per_period_across_a_kill_and_with_two_dispatchers(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    name = "every-two"
    schedule = await add(bus, name, f"{PERIOD_S}s")
    ticks = TickWatch(bus, name)

    def dispatcher(label: str) -> list[str]:
        return [label, "dispatcher", "--nats-url", nats_url, "--data-dir", str(tmp_path)]

    with Processes(tmp_path / "logs") as processes:
        async with running(ticks.poll):
            first = processes.start(*dispatcher("dispatcher-a"))
            await wait_for(
                lambda: jobs_at_least(bus, name, 3), timeout_s=20, what="3 scheduled jobs"
            )
            first.kill()  # SIGKILL
            # Two periods with no dispatcher at all: the server still ticks.
            await asyncio.sleep(2 * PERIOD_S)
            second = processes.start(*dispatcher("dispatcher-a-again"))
            third = processes.start(*dispatcher("dispatcher-b"))
            for child in (second, third):
                await wait_for(
                    functools.partial(log_contains, child, "dispatcher started"),
                    timeout_s=20,
                    what=f"{child.name} to start",
                )
            # Then some periods with both running.
            both_up = len(ticks.fired)
            await wait_for(
                lambda: jobs_at_least(bus, name, both_up + 4), timeout_s=20, what="4 more jobs"
            )
            # Stop the server firing, keeping the ticks for the count (`rm` would drop them).
            await bus.js.purge_stream(SCHEDULES_STREAM, subject=schedule_subject(name))
            await ticks.read()

        await wait_for(
            lambda: every_tick_has_its_job(bus, name, ticks),
            timeout_s=15,
            what="a job for every tick",
        )
        shares = [child.log_text().count(f"schedule {name} fired") for child in (second, third)]
    jobs = await scheduled_jobs(bus, name)
    print(f"{len(ticks.fired)} ticks, {len(jobs)} jobs; the two dispatchers fired {shares}")
    assert_one_job_per_tick(jobs, ticks.fired)
    assert_every_period(ticks.fired)
    assert len(jobs) >= 6
    for job in jobs:
        assert job.job_id == tick_job_id(schedule, tick_of(job))


async def test_a_tick_delivered_twice_at_once_and_again_is_one_job(bus: Bus, nats_url: str) -> None:
    """A dispatcher killed after submitting and before acking: the tick comes back to another
    one, maybe while the first is still at it. The fence keeps it one job."""
    await add(bus, "twice", "1s")
    ticks = await bus.js.pull_subscribe_bind(SCHEDULE_TICKS_CONSUMER, SCHEDULES_STREAM)
    [tick] = await ticks.fetch(1, timeout=5)
    # Deliveries of the one tick (each acked on its own).
    first, second, third = (dataclasses.replace(tick) for _ in range(3))
    async with connected([nats_url], name="other-dispatcher") as other:
        await asyncio.gather(ScheduleFirer(bus).fire(first), ScheduleFirer(other).fire(second))
        await ScheduleFirer(other).fire(third)
    jobs = await scheduled_jobs(bus, "twice")
    assert len(jobs) == 1
    assert tick_of(jobs[0]) == tick.metadata.sequence.stream


async def test_foreign_ticks_are_set_aside_and_the_good_schedule_goes_on(bus: Bus) -> None:
    await ensure_schedules(bus.js)
    # A schedule message whose body is not a schedule (the server fires it all the same) ...
    await bus.js.publish(
        "sched.def.junk",
        b"not a schedule",
        headers={
            Header.SCHEDULE.value: "@every 1s",
            Header.SCHEDULE_TARGET.value: "sched.tick.junk",
        },
    )
    # ... and a "tick" published by a client, not by the server.
    await bus.js.publish("sched.tick.forged", b"{}")
    await add(bus, "good", "1s")
    dispatcher = Dispatcher(bus, lease_s=5)
    async with running(dispatcher.run):

        async def progressed() -> bool:
            good = await scheduled_jobs(bus, "good")
            return len(good) >= 2 and dispatcher.state.set_aside >= 3

        await wait_for(progressed, timeout_s=15, what="good jobs and set-aside ticks")
    foreign = [
        entry.event
        for entry in await read_log(bus)
        if isinstance(entry.event, JobSubmitted)
        and entry.event.labels.get(SCHEDULE_LABEL) != "good"
    ]
    assert foreign == []


async def test_a_stopped_dispatcher_leaves_nothing_for_the_connection_to_drain(
    nats_url: str,
) -> None:
    """Its schedule-ticks subscription goes with it: a reply to its last fetch left there
    would hold the connection's close for the drain timeout (5 s)."""
    bus = await Bus.connect([nats_url], name="test-close")
    closed = False
    try:
        await ensure_streams(bus.js)
        await ensure_buckets(bus.js)
        async with running(Dispatcher(bus, lease_s=5).run):
            await asyncio.sleep(1.5)  # a few ticks fetches (each waits up to FETCH_WAIT_S)
        began = time.monotonic()
        await bus.close()
        closed = True
        assert time.monotonic() - began < 2.5
    finally:
        if not closed:
            await bus.close()


def invoke(*args: str) -> Result:
    """A `jobstream` command run in this process (each starts its own event loop)."""
    return CliRunner().invoke(app, list(args))


def test_schedule_add_list_rm_from_the_command_line(nats_url: str, tmp_path: Path) -> None:
    url = ["--nats-url", nats_url, "--data-dir", str(tmp_path)]
    added = invoke(
        "schedule",
        "add",
        "often",
        "--every",
        "1s",
        "--kind",
        "sum",
        "--args",
        '{"a": 1, "b": 2}',
        "--label",
        "team=ops",
        "--name",
        "often-job",
        *url,
    )
    assert added.exit_code == 0, added.output
    assert "schedule often added: every 1s, first at" in added.stdout
    cron = invoke("schedule", "add", "nightly", "--cron", "30 2 * * *", "--kind", "noop", *url)
    assert cron.exit_code == 0, cron.output

    duplicate = invoke("schedule", "add", "often", "--every", "5m", "--kind", "noop", *url)
    assert duplicate.exit_code == 2
    assert "a schedule named 'often' exists already" in duplicate.stderr

    unknown = invoke("schedule", "rm", "never-added", *url)
    assert unknown.exit_code == 1
    assert "no schedule named 'never-added'" in unknown.stderr

    def last_tick_seen() -> bool:
        listed = invoke("schedule", "list", "--json", *url)
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        return any(row["last_job_id"] for row in rows)

    wait_until(last_tick_seen, timeout_s=10)
    listed = invoke("schedule", "list", "--json", *url)
    rows = {row["name"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert set(rows) == {"often", "nightly"}
    assert rows["nightly"]["timing"] == "cron 30 2 * * *"
    assert rows["nightly"]["next_fire_at"].endswith("T02:30:00Z")
    assert rows["often"]["timing"] == "every 1s"
    assert rows["often"]["last_job_id"] is not None
    # No dispatcher runs: the tick is there, its job is not yet.
    assert rows["often"]["last_job_submitted"] is False
    table = invoke("schedule", "list", *url)
    assert "no dispatcher has submitted it yet" in table.stdout

    removed = invoke("schedule", "rm", "often", *url)
    assert removed.exit_code == 0, removed.output
    after = invoke("schedule", "list", "--json", *url)
    assert [json.loads(line)["name"] for line in after.stdout.splitlines()] == ["nightly"]


def wait_until(probe: Callable[[], bool], *, timeout_s: float) -> None:
    """Poll a command-line probe (each call runs its own event loop, so not from one)."""
    deadline = time.monotonic() + timeout_s
    while not probe():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s"
        time.sleep(0.2)


def test_populate_submits_n_sample_sum_jobs(nats_url: str, tmp_path: Path) -> None:
    result = invoke("populate", "5", "--json", "--nats-url", nats_url, "--seed", "7")
    assert result.exit_code == 0, result.output
    job_ids = json.loads(result.stdout)["job_ids"]
    assert len(set(job_ids)) == 5

    async def submitted() -> list[JobSubmitted]:
        async with connected([nats_url]) as bus:
            return [
                entry.event
                for entry in await read_log(bus)
                if isinstance(entry.event, JobSubmitted)
            ]

    jobs = asyncio.run(submitted())
    assert sorted(job.job_id for job in jobs) == sorted(job_ids)
    for job in jobs:
        [task] = job.tasks
        assert task.kind == "sum"
        assert set(task.args) == {"a", "b"}
        assert all(0 <= value <= 100 for value in task.args.values())
