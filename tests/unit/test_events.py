"""The event catalogue and codec: JSON on the wire, tolerant of new fields, strict on types."""

import json
import typing

import pytest

from jobstream.events import (
    JOB_EVENTS,
    DecodeError,
    Event,
    JobEvent,
    JobSubmitted,
    OneTaskEvent,
    PriorityLevel,
    TaskExpander,
    TaskSpec,
    TaskSucceeded,
    WorkerEvent,
    chunk_index_of,
    decode_event,
    decode_task_message,
    encode,
    event_json_schema,
    event_type,
    expand_chunks,
    expand_tasks,
    is_job_event,
    is_one_task_event,
    is_worker_event,
    job_subject,
    overlapping,
    stored_patterns,
    subject_for,
    task_event_subject,
    task_index_of,
    task_queue_subject,
)
from tests.unit.test_schema import ONE_OF_EACH


def test_round_trip_and_wire_name() -> None:
    event = TaskSucceeded(
        job_id="J", task_id="J-0", kind="sum", worker_id="w", attempt=1, result=3, duration_s=0.1
    )
    wire = json.loads(encode(event))
    assert wire["type"] == "task.succeeded" == event_type(event)
    assert decode_event(encode(event)) == event


def test_unknown_fields_are_ignored_and_new_fields_default() -> None:
    data = b'{"type":"job.submitted","job_id":"J","tasks":[{"kind":"noop"}],"from_the_future":1}'
    job = decode_event(data)
    assert isinstance(job, JobSubmitted)
    assert job.max_attempts == 3 and job.tasks == [TaskSpec(kind="noop")]


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b'{"type":"job.exploded","job_id":"J"}',
        b'{"type":"job.submitted","job_id":"J","tasks":[{"kind":"noop","count":0}]}',
        b'{"type":"job.submitted","job_id":"J","tasks":[],"max_attempts":0}',
        b'{"type":"task.succeeded","job_id":"J"}',
    ],
)
def test_malformed_payloads_are_decode_errors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_event(data)


def test_task_ids_are_derived_from_the_job() -> None:
    job = JobSubmitted(
        job_id="J", tasks=[TaskSpec(kind="sum", args={"a": 1}, count=2), TaskSpec(kind="noop")]
    )
    messages = expand_tasks(job)
    assert [m.task_id for m in messages] == ["J-0", "J-1", "J-2"]
    assert decode_task_message(encode(messages[0])) == messages[0]
    assert job.task_count == 3


@pytest.mark.parametrize(
    ("task_id", "index"),
    [
        ("J-0", 0),
        ("J-7", 7),
        ("J-99999999", 99_999_999),
        ("J-100000000", None),  # MAX_TASKS_PER_JOB
        ("J-1000000000", None),
        ("J-9" * 500, None),
        ("J-", None),
        ("J-00", None),
        ("J-07", None),
        ("J--1", None),
        ("J-+1", None),
        ("J- 1", None),
        ("J-1 ", None),
        ("J-1_000", None),
        ("J-١٢", None),  # Arabic-Indic digits: digits to `str.isdigit`, not to `task_id_for`
        ("J-²", None),
        ("J-c0", None),
        ("JJ-0", None),
        ("K-0", None),
        ("J0", None),
        ("", None),
    ],
)
def test_a_task_index_is_read_only_from_an_id_task_id_for_makes(
    task_id: str, index: int | None
) -> None:
    assert task_index_of("J", task_id) == index
    assert chunk_index_of("J", task_id.replace("J-", "J-c", 1)) == index


def test_the_event_groups_by_type_are_their_unions() -> None:
    """The projections check an event's group by its exact type: no event type may be
    subclassed, and each group holds what its union does."""
    event_types = typing.get_args(Event)
    assert all(event_type.__subclasses__() == [] for event_type in event_types)
    assert set(JOB_EVENTS) == set(typing.get_args(JobEvent))
    assert {type(event) for event in ONE_OF_EACH} == set(event_types)
    for event in ONE_OF_EACH:
        assert is_job_event(event) == isinstance(event, JobEvent)
        assert is_worker_event(event) == isinstance(event, WorkerEvent)
        assert is_one_task_event(event) == isinstance(event, OneTaskEvent)


def test_subjects() -> None:
    assert job_subject("J") == "evt.job.J"
    assert task_event_subject("J", "J-0") == "evt.task.J.J-0"
    assert task_queue_subject("default", "J", level=PriorityLevel.HIGH) == "task.default.high.J"
    assert subject_for(JobSubmitted(job_id="J", tasks=[])) == "evt.job.J"
    for bad in ("a.b", "a*", "a>", "a b", "a\r\nPUB x", "é"):
        with pytest.raises(ValueError, match=r"job id '.*' has characters outside letters"):
            job_subject(bad)
    with pytest.raises(ValueError, match="job id is empty"):
        job_subject("")


def test_stored_patterns_add_the_bucket_and_never_overlap() -> None:
    assert stored_patterns(["evt.task.J.J-0"]) == ["evt.task.J.J-0", "evt.task.J.J-0.*"]
    assert stored_patterns(["evt.task.*.*"]) == ["evt.task.*.*", "evt.task.*.*.*"]
    assert stored_patterns(["evt.job.J", "evt.task.J.>"]) == ["evt.job.J", "evt.task.J.>"]
    assert stored_patterns(["evt.>", "evt.task.J.J-0"]) == ["evt.>"]
    # A bucketed subject given by hand is covered by the expansion of its task's pattern.
    assert stored_patterns(["evt.task.J.J-0", "evt.task.J.J-0.5"]) == [
        "evt.task.J.J-0",
        "evt.task.J.J-0.*",
    ]
    assert stored_patterns(["evt.task.J.*", "evt.task.J.J-0", "evt.task.J.*"]) == [
        "evt.task.J.*",
        "evt.task.J.*.*",
    ]


def test_overlapping_patterns_are_found() -> None:
    assert overlapping(["evt.task.*.x", "evt.task.y.*"]) == ("evt.task.*.x", "evt.task.y.*")
    assert overlapping(["evt.job.>", "evt.job.J"]) == ("evt.job.>", "evt.job.J")
    assert overlapping(["evt.task.J.*", "evt.task.J.*.*", "evt.job.J"]) is None
    assert overlapping(["evt.task.J.>", "evt.job.>"]) is None
    assert overlapping(["evt.a.>", "evt.a"]) is None  # ">" takes at least one more token


def test_schema_covers_every_event() -> None:
    schema = event_json_schema()
    names = set(schema["$defs"])
    assert {"JobSubmitted", "TaskSucceeded", "WorkerLost", "TaskMessage"} <= names


def test_the_expander_chunks_on_the_same_boundaries_whatever_the_batches() -> None:
    whole = JobSubmitted(job_id="J", chunk_size=4, tasks=[TaskSpec(kind="noop", count=10)])
    expected = expand_chunks(whole)
    expander = TaskExpander(job_id="J", max_attempts=3, timeout_s=None, chunk_size=4)
    batches = [(0, [TaskSpec(kind="noop", count=3)]), (3, [TaskSpec(kind="noop", count=7)])]
    streamed = [m for first, specs in batches for m in expander.feed(first, specs)]
    assert [*streamed, *expander.finish()] == expected
    assert [m.task_id for m in expected] == ["J-c0", "J-c4", "J-c8"]
    resumed = TaskExpander(job_id="J", max_attempts=3, timeout_s=None, chunk_size=4, start=4)
    assert [*resumed.feed(0, whole.tasks), *resumed.finish()] == expected[1:]
    with pytest.raises(ValueError, match="index 10 was next"):
        list(expander.feed(12, [TaskSpec(kind="noop")]))
