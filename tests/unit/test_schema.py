"""`jobstream schema` is standard JSON Schema 2020-12: it loads in the `jsonschema` package's
strict validator, accepts every event we write and refuses what the decoder would refuse."""

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, get_args

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from jobstream.cli.app import app
from jobstream.events import (
    MAX_TASKS_PER_JOB,
    ChunkFailure,
    ChunkItem,
    ChunkResult,
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRejected,
    JobSealed,
    JobSubmitted,
    JobTasksAdded,
    TaskCancelled,
    TaskChunkFinished,
    TaskDeadLettered,
    TaskFailed,
    TaskMessage,
    TaskProgress,
    TaskRequeued,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    WorkerForgotten,
    WorkerLost,
    WorkerStarted,
    WorkerStopped,
    encode,
    event_json_schema,
    event_type,
    utc_now,
)

Schema = dict[str, Any]
SCHEMA = event_json_schema()
NOW = utc_now()

SUBMITTED = JobSubmitted(
    job_id="J",
    name="nightly",
    queue="q",
    tasks=[TaskSpec(kind="sum", args={"a": 1, "b": 2}, count=2, max_attempts=5)],
    timeout_s=30.0,
    idempotency_key="k",
    labels={"team": "a"},
    chunk_size=10,
)
STARTED = TaskStarted(
    job_id="J",
    task_id="J-0",
    worker_id="w",
    attempt=1,
    lease_deadline=NOW + timedelta(seconds=30),
)

ONE_OF_EACH: list[Event] = [
    SUBMITTED,
    JobCancelled(job_id="J", reason="operator"),
    JobCompleted(job_id="J", succeeded=2, duration_s=1.5),
    JobFailed(job_id="J", succeeded=1, dead_lettered=1, duration_s=1.5, reason="dead letters"),
    JobRejected(job_id="J", reason="count below 1", rejected_seq=7),
    JobTasksAdded(job_id="J", batch=0, first_index=1, tasks=[TaskSpec(kind="noop", count=2)]),
    JobSealed(job_id="J", batches=1, task_count=3),
    STARTED,
    TaskProgress(job_id="J", task_id="J-0", worker_id="w", attempt=1, message="half", fraction=0.5),
    TaskSucceeded(
        job_id="J",
        task_id="J-0",
        kind="sum",
        worker_id="w",
        attempt=1,
        result={"sum": 3},
        duration_s=0,
    ),
    TaskFailed(
        job_id="J", task_id="J-0", worker_id="w", attempt=1, error="boom", next_retry_at=NOW
    ),
    TaskDeadLettered(
        job_id="J", task_id="J-0", kind="fail", reason="attempts exhausted", attempts=3
    ),
    TaskRequeued(job_id="J", task_id="J-0", kind="fail", attempts_before=3, requeued_by="ops"),
    TaskCancelled(job_id="J", task_id="J-0", reason="job cancelled"),
    TaskChunkFinished(
        job_id="J",
        task_id="J-c0",
        worker_id="w",
        attempt=1,
        duration_s=0.2,
        results=[ChunkResult(task_id="J-0", kind="noop", duration_s=0.1)],
        failed=[ChunkFailure(task_id="J-1", kind="fail", error="boom", retryable=False)],
    ),
    WorkerStarted(
        worker_id="host-1-A", host="host", pid=1, queues=["default"], concurrency=4, version="1"
    ),
    WorkerStopped(worker_id="host-1-A"),
    WorkerLost(worker_id="host-1-A", last_seen=NOW),
    WorkerForgotten(worker_id="host-1-A", reason="pruned"),
]


def validator(schema: Schema = SCHEMA) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def definitions() -> Iterator[tuple[str, Schema]]:
    for member in get_args(Event):
        yield member.__name__, SCHEMA["$defs"][member.__name__]


def keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from keys(item)


def wire(event: Event) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(encode(event))
    return decoded


def test_the_document_is_draft_2020_12_and_loads_in_the_strict_validator() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["$id"] and SCHEMA["title"]
    Draft202012Validator.check_schema(SCHEMA)
    # OpenAPI's keywords, which ajv's strict mode refuses.
    assert not {"discriminator", "mapping"} & set(keys(SCHEMA))


def test_the_command_prints_the_document() -> None:
    printed = CliRunner().invoke(app, ["schema"])
    assert printed.exit_code == 0
    assert json.loads(printed.stdout) == SCHEMA


def test_every_event_and_the_task_message_are_defined_and_the_document_is_one_event() -> None:
    refs = [ref["$ref"] for ref in SCHEMA["oneOf"]]
    assert refs == [f"#/$defs/{member.__name__}" for member in get_args(Event)]
    assert "TaskMessage" in SCHEMA["$defs"]
    assert {type(event) for event in ONE_OF_EACH} == set(get_args(Event))


def test_type_id_and_at_are_required_in_every_event_and_times_are_date_times() -> None:
    for name, definition in definitions():
        assert {"type", "id", "at"} <= set(definition["required"]), name
        assert definition["properties"]["at"] == {"type": "string", "format": "date-time"}, name
    started = SCHEMA["$defs"]["TaskStarted"]["properties"]
    assert started["type"] == {"const": "task.started"}
    assert started["lease_deadline"]["format"] == "date-time"


def test_the_constraints_of_the_types_are_published() -> None:
    submitted = SCHEMA["$defs"]["JobSubmitted"]["properties"]
    assert submitted["job_id"]["pattern"] == "^[A-Za-z0-9_-]+$"
    assert submitted["job_id"]["maxLength"] == 64
    assert (submitted["max_attempts"]["minimum"], submitted["max_attempts"]["maximum"]) == (1, 1000)
    assert submitted["timeout_s"]["anyOf"][0]["exclusiveMinimum"] == 0
    count = SCHEMA["$defs"]["TaskSpec"]["properties"]["count"]
    assert (count["minimum"], count["maximum"]) == (1, MAX_TASKS_PER_JOB)


@pytest.mark.parametrize("event", ONE_OF_EACH, ids=event_type)
def test_an_event_of_every_type_validates(event: Event) -> None:
    validator().validate(wire(event))


def test_the_task_message_validates_against_its_definition() -> None:
    message = TaskMessage(
        job_id="J",
        task_id="J-c0",
        kind="chunk",
        timeout_s=5.0,
        items=[ChunkItem(task_id="J-0", kind="noop")],
        retry_at=NOW,
    )
    task_message = {
        **{k: v for k, v in SCHEMA.items() if k != "oneOf"},
        "$ref": "#/$defs/TaskMessage",
    }
    validator(task_message).validate(json.loads(encode(message)))
    assert not validator(task_message).is_valid(
        {"job_id": "J", "task_id": "J-0", "kind": "noop", "retry_at": "soon"}
    )


def started(**changes: Any) -> dict[str, Any]:
    valid = wire(STARTED)
    return {key: value for key, value in {**valid, **changes}.items() if value is not None}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(started(at=None), id="missing at"),
        pytest.param(started(id=None), id="missing id"),
        pytest.param(started(job_id="J" * 5000), id="5000-char job id"),
        pytest.param(started(job_id="a.b"), id="dot in job id"),
        pytest.param(started(attempt="1"), id="wrong-typed attempt"),
        pytest.param(started(attempt=-1), id="attempt below bound"),
        pytest.param(started(type="task.exploded"), id="unknown type"),
        pytest.param(started(type=None), id="no type"),
        pytest.param(started(at="yesterday"), id="at not a date-time"),
        pytest.param(started(lease_deadline="2026-01-01T00:00:00"), id="time without offset"),
        pytest.param(
            {**wire(SUBMITTED), "tasks": [{"kind": "noop", "count": 0}]}, id="nested bound"
        ),
    ],
)
def test_a_bad_event_is_rejected(data: dict[str, Any]) -> None:
    assert not validator().is_valid(data)
