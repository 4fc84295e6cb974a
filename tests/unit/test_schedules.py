"""Schedules without a server: intervals and cron expressions checked as nats-server checks
them, their next fire times, the schedule message, and a tick turned into its job."""

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from typer.testing import CliRunner

from jobstream.cli.app import app
from jobstream.events import (
    SCHEDULE_LABEL,
    DecodeError,
    Header,
    Schedule,
    TaskSpec,
    TimingError,
    decode_schedule,
    encode,
    interval_text,
    parse_cron,
    parse_interval,
    schedule_subject,
    tick_job_id,
)
from jobstream.services.dispatcher._schedules import UnusableTickError, job_for_tick, read_tick

AT = datetime(2026, 12, 2, 1, 30, 15, tzinfo=UTC)  # a Wednesday


def schedule(**changes: object) -> Schedule:
    base = Schedule(
        name="nightly",
        every_s=600,
        tasks=[TaskSpec(kind="sum", args={"a": 1, "b": 2})],
        labels={"team": "ops"},
        created_at=AT,
    )
    return msgspec.structs.replace(base, **changes)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2s", 2), ("10m", 600), ("1h30m", 5400), ("1d", 86_400), ("90S", 90)],
)
def test_intervals(text: str, seconds: int) -> None:
    assert parse_interval(text) == seconds
    assert parse_interval(interval_text(seconds)) == seconds


@pytest.mark.parametrize("text", ["0s", "banana", "", "10", "-5s", "1.5s", "10 m", "367d"])
def test_bad_intervals(text: str) -> None:
    with pytest.raises(TimingError, match="interval"):
        parse_interval(text)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/10 * * * *", AT, datetime(2026, 12, 2, 1, 40, tzinfo=UTC)),
        ("0 9 * * mon-fri", AT, datetime(2026, 12, 2, 9, 0, tzinfo=UTC)),
        ("30 1 * * *", AT, datetime(2026, 12, 3, 1, 30, tzinfo=UTC)),
        ("0 0 1 jan *", AT, datetime(2027, 1, 1, tzinfo=UTC)),
        ("@hourly", AT, datetime(2026, 12, 2, 2, 0, tzinfo=UTC)),
        # Both day fields restricted: either matches (the 5th, or a Sunday).
        ("0 0 5 * 0", AT, datetime(2026, 12, 5, tzinfo=UTC)),
        ("0 0 29 2 *", AT, datetime(2028, 2, 29, tzinfo=UTC)),
        ("5/20 * * * *", AT, datetime(2026, 12, 2, 1, 45, tzinfo=UTC)),
    ],
)
def test_cron_next_fire(expression: str, after: datetime, expected: datetime) -> None:
    cron = parse_cron(expression)
    assert cron.next_after(after) == expected
    assert cron.next_after(expected) > expected


def test_cron_server_pattern_fires_at_second_zero() -> None:
    assert parse_cron("*/10 * * * *").server_pattern == "0 */10 * * * *"
    assert schedule(every_s=None, cron="*/10 * * * *").server_pattern == "0 */10 * * * *"
    assert schedule().server_pattern == "@every 600s"


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("* * * * * * *", "7 fields; expected 5"),
        ("0 * * * * *", "6 fields; expected 5"),
        ("* * * *", "4 fields"),
        ("60 * * * *", "minute is 0 to 59"),
        ("0 24 * * *", "hour is 0 to 23"),
        ("0 0 0 * *", "day-of-month is 1 to 31"),
        ("0 0 * 13 *", "month is 1 to 12"),
        ("0 0 * * 7", "day-of-week is 0 to 6"),
        ("*/0 * * * *", "step must be 1 or more"),
        ("5-1 * * * *", "starts after it ends"),
        ("1-2-3 * * * *", "more than one '-'"),
        ("x * * * *", "'x' is not a number"),
        ("0 0 30 2 *", "never fires"),
    ],
)
def test_bad_cron(expression: str, fragment: str) -> None:
    with pytest.raises(TimingError, match=fragment):
        parse_cron(expression)


def test_schedule_message_round_trip_and_its_rules() -> None:
    good = schedule()
    assert decode_schedule(encode(good)) == good
    with pytest.raises(DecodeError, match="exactly one"):
        decode_schedule(encode(schedule(cron="* * * * *")))
    with pytest.raises(DecodeError, match="exactly one"):
        decode_schedule(encode(schedule(every_s=None)))
    with pytest.raises(DecodeError, match="no tasks"):
        decode_schedule(encode(schedule(tasks=[])))
    with pytest.raises(DecodeError):
        decode_schedule(encode(schedule(every_s=None, cron="0 99 * * *")))
    with pytest.raises(DecodeError):
        decode_schedule(b'{"name": "a b"}')
    with pytest.raises(DecodeError):
        decode_schedule(b"\xff not json")


def test_a_tick_is_one_job_id_whoever_reads_it() -> None:
    ours = schedule()
    headers = {Header.SCHEDULER.value: schedule_subject("nightly")}
    fired = AT + timedelta(minutes=10)
    tick = read_tick("sched.tick.nightly", encode(ours), headers, seq=42, fired_at=fired)
    job = job_for_tick(tick)
    again = job_for_tick(
        read_tick("sched.tick.nightly", encode(ours), headers, seq=42, fired_at=fired)
    )
    assert job == again
    assert job.job_id == tick_job_id(ours, 42) != tick_job_id(ours, 43)
    # A schedule made anew under the same name (a new stream, sequences from 1) differs.
    assert tick_job_id(schedule(created_at=AT + timedelta(days=1)), 42) != job.job_id
    assert job.labels == {"team": "ops", SCHEDULE_LABEL: "nightly"}
    assert job.name == "nightly"
    assert job.at == fired
    assert job.tasks == ours.tasks


@pytest.mark.parametrize(
    ("subject", "body", "scheduler", "fragment"),
    [
        ("sched.tick.nightly", b"junk", "sched.def.nightly", "not a jobstream schedule"),
        ("sched.tick.nightly", None, None, "no Nats-Scheduler header"),
        ("sched.tick.nightly", None, "sched.def.other", "not a tick of schedule nightly"),
        ("sched.tick.other", None, "sched.def.other", "carries schedule nightly"),
        ("sched.tick.a.b", None, "sched.def.a.b", "schedule name 'a.b'"),
    ],
)
def test_foreign_ticks_are_unusable(
    subject: str, body: bytes | None, scheduler: str | None, fragment: str
) -> None:
    headers = {Header.SCHEDULER.value: scheduler} if scheduler else {}
    with pytest.raises(UnusableTickError, match=fragment):
        read_tick(subject, body or encode(schedule()), headers, seq=1, fired_at=AT)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--every", "0s"], "interval '0s': must be from 1 second"),
        (["--every", "banana"], "interval 'banana': expected a number and a unit"),
        (["--cron", "* * * * * * *"], "7 fields; expected 5"),
        (["--cron", "0 25 * * *"], "hour is 0 to 23"),
        (["--cron", "61 * * * *"], "minute is 0 to 59"),
        ([], "give either --every"),
        (["--every", "1m", "--cron", "* * * * *"], "give either --every"),
        (["--every", "1m", "--kind", "nope"], "unknown task kind 'nope'"),
        (["--every", "1m", "--args", "[1]"], "--args must be a JSON object"),
        (["--every", "1m", "--label", "novalue"], "expected KEY=VALUE"),
        (["--every", "1m", "--label", "schedule=x"], "the label 'schedule'"),
        (["--every", "1m", "--queue", "a.b"], "queue 'a.b' has characters outside"),
    ],
)
def test_schedule_add_rejects_bad_input_before_connecting(args: list[str], fragment: str) -> None:
    # The URL is unreachable: these fail before any connection, with exit 2.
    result = CliRunner().invoke(
        app,
        ["schedule", "add", "nightly", "--nats-url", "nats://127.0.0.1:1", "--kind", "noop", *args],
    )
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name", ["a b", "a.b", "x" * 65, ""])
def test_schedule_names_follow_the_name_rule(name: str) -> None:
    for command in (["add", name, "--every", "1m", "--kind", "noop"], ["rm", name]):
        result = CliRunner().invoke(app, ["schedule", *command, "--nats-url", "nats://127.0.0.1:1"])
        assert result.exit_code == 2, result.output
        assert "schedule name" in result.stderr
