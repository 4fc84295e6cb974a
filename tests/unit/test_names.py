"""The one rule for names that reach subjects: charset and length, at every entry."""

from typing import Any

import msgspec
import pytest

from jobstream.events import (
    MAX_LENGTH,
    DecodeError,
    JobSubmitted,
    NameKind,
    PriorityLevel,
    TaskSpec,
    check_name,
    decode_event,
    decode_task_message,
    encode,
    quote,
    safe_name,
    task_event_subject,
    task_id_for,
    task_queue_subject,
)

CONTROL_LINE_LIMIT = 4096


def test_longest_valid_subject_is_far_below_the_control_line_limit() -> None:
    job_id = "J" * MAX_LENGTH[NameKind.JOB_ID]
    task_id = "T" * MAX_LENGTH[NameKind.TASK_ID]
    queue = "Q" * MAX_LENGTH[NameKind.QUEUE]
    queued = task_queue_subject(queue, job_id, level=PriorityLevel.NORMAL)
    longest = max(len(task_event_subject(job_id, task_id)), len(queued))
    assert longest < CONTROL_LINE_LIMIT // 10


def test_the_task_ids_of_the_longest_job_id_are_valid() -> None:
    job_id = "J" * MAX_LENGTH[NameKind.JOB_ID]
    assert check_name(task_id_for(job_id, 999_999_999), NameKind.TASK_ID)
    assert check_name(f"{job_id}-c999999999", NameKind.TASK_ID)


@pytest.mark.parametrize("kind", list(NameKind))
def test_oversized_names_are_refused_with_the_field_and_the_limit(kind: NameKind) -> None:
    value = "q" * 5000
    with pytest.raises(ValueError) as info:
        check_name(value, kind)
    message = str(info.value)
    assert kind.value in message
    assert f"at most {MAX_LENGTH[kind]} characters" in message
    assert "5,000 characters" in message
    assert len(message) < 200  # the value is quoted by a short prefix, never whole


@pytest.mark.parametrize("value", [None, 7, ["a"], b"abc"])
def test_names_of_the_wrong_type_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="must be a string"):
        check_name(value, NameKind.QUEUE)


def test_quote_cuts_long_values() -> None:
    assert quote("abc") == "'abc'"
    assert quote("x" * 100).endswith("… (100 characters)")
    assert quote(3) == "a int"


def test_safe_name_makes_a_host_name_valid() -> None:
    assert safe_name("web1.example.com", NameKind.WORKER_ID) == "web1-example-com"
    assert len(safe_name("h" * 500, NameKind.WORKER_ID)) == MAX_LENGTH[NameKind.WORKER_ID]


def _submitted(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {
        "type": "job.submitted",
        "id": "E1",
        "at": "2026-12-01T00:00:00Z",
        "job_id": "J1",
        "queue": "default",
        "tasks": [{"kind": "noop"}],
    }
    fields.update(overrides)
    return msgspec.json.encode(fields)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("queue", "q" * 5000),
        ("queue", "a.b"),
        ("queue", 5),
        ("job_id", "A" * 10240),
        ("job_id", ""),
        ("job_id", None),
        ("id", "x" * 1000),
        ("max_attempts", 10**12),
        ("max_attempts", "3"),
        ("timeout_s", 1e300),
        ("timeout_s", -1),
        ("priority", 2**40),
        ("chunk_size", 10**9),
        ("tasks", [{"kind": "noop", "count": 10**12}]),
        ("tasks", [{"kind": "k" * 1000}]),
        ("tasks", "not a list"),
        ("labels", {"a": 1}),
        ("at", "yesterday"),
    ],
)
def test_a_poison_job_submitted_is_a_decode_error(field: str, value: Any) -> None:
    with pytest.raises(DecodeError, match=field if field != "tasks" else "tasks"):
        decode_event(_submitted(**{field: value}))


def test_a_valid_job_submitted_decodes() -> None:
    event = decode_event(_submitted())
    assert isinstance(event, JobSubmitted)
    assert event.tasks == [TaskSpec(kind="noop")]


def test_a_task_message_with_a_bad_id_is_a_decode_error() -> None:
    data = msgspec.json.encode({"job_id": "J", "task_id": "J-0." + "x" * 200, "kind": "noop"})
    with pytest.raises(DecodeError, match="task_id"):
        decode_task_message(data)
    assert decode_task_message(encode({"job_id": "J", "task_id": "J-0", "kind": "noop"}))
