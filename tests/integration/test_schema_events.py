"""Every event of a real run (dispatcher and worker against a real nats-server), read raw from
the log, is valid against `jobstream schema` in the `jsonschema` package's strict validator; a
poisoned submission written by a foreign client is not, and the dispatcher's `job.rejected` is."""

import asyncio
import contextlib
import json
from collections import Counter
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from jobstream.cli._jobs import cancel_job
from jobstream.events import (
    EVENT_SUBJECTS,
    Bus,
    JobRejected,
    JobSubmitted,
    SourceItem,
    TaskCancelled,
    TaskSpec,
    TaskStarted,
    event_batches,
    event_json_schema,
    job_subject,
    new_id,
)
from jobstream.services.dispatcher import Dispatcher
from jobstream.services.worker import Worker
from tests.integration.test_worker_dispatcher import FAST, read_log, running, wait_for_job_end

# Events that nothing in this run writes: `task.progress` (no handler reports progress yet),
# `task.requeued` (`jobstream dlq retry`, which needs the read model) and `worker.lost`.
EXPECTED_TYPES = {
    "job.submitted",
    "job.cancelled",
    "job.completed",
    "job.failed",
    "job.rejected",
    "task.started",
    "task.succeeded",
    "task.failed",
    "task.dead_lettered",
    "task.cancelled",
    "task.chunk_finished",
    "worker.started",
    "worker.stopped",
}


async def raw_log(bus: Bus) -> list[SourceItem]:
    last = await bus.stream_last_seq()
    items: list[SourceItem] = []
    batches = event_batches(bus, start_seq=1, stop=asyncio.Event(), filter_subject=EVENT_SUBJECTS)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            items.extend(batch)
            if batch[-1].seq >= last:
                break
    return items


async def until_started(bus: Bus, job_id: str) -> None:
    while not any(isinstance(e, TaskStarted) and e.job_id == job_id for e in await read_log(bus)):
        await asyncio.sleep(0.1)


async def until_rejected(bus: Bus, job_id: str) -> None:
    while not any(isinstance(e, JobRejected) and e.job_id == job_id for e in await read_log(bus)):
        await asyncio.sleep(0.1)


async def publish_poison(bus: Bus, job_id: str) -> int:
    """A job submission out of bounds (a task count of 0), written as a foreign client would."""
    poison = {"type": "job.submitted", "job_id": job_id, "tasks": [{"kind": "noop", "count": 0}]}
    ack = await bus.js.publish(job_subject(job_id), json.dumps(poison).encode())
    return int(ack.seq)


async def until_cancelled(bus: Bus, job_id: str, count: int) -> None:
    while (
        sum(isinstance(e, TaskCancelled) and e.job_id == job_id for e in await read_log(bus))
        < count
    ):
        await asyncio.sleep(0.1)


def reasons(error: ValidationError) -> list[str]:
    """Why an event fails the top-level `oneOf`: the errors of the definition of its `type`."""
    by_definition: dict[int | str, list[ValidationError]] = {}
    for sub in error.context or []:
        by_definition.setdefault(sub.relative_schema_path[0], []).append(sub)
    for subs in by_definition.values():
        if not any(list(sub.relative_path) == ["type"] for sub in subs):
            return [f"{sub.message[:200]} at {sub.json_path}" for sub in subs]
    return [error.message[:200]]


def jobs() -> tuple[list[JobSubmitted], JobSubmitted]:
    """Jobs that end by themselves (completed, failed, chunked), and one to cancel."""
    mixed = JobSubmitted(
        job_id=new_id(),
        tasks=[
            TaskSpec(kind="sum", args={"a": 1, "b": 2}),
            TaskSpec(kind="sleep", args={"seconds": 1.0}),
            TaskSpec(kind="fail", args={"succeed_on_attempt": 2}),
            TaskSpec(kind="fail", args={"message": "broken"}),
            TaskSpec(kind="sum", args={"a": "x", "b": 1}),
        ],
        max_attempts=2,
        timeout_s=60.0,
        labels={"suite": "schema"},
    )
    clean = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop", count=2)])
    chunked = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop", count=4)], chunk_size=2)
    doomed = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="sleep", args={"seconds": 5})])
    return [mixed, clean, chunked], doomed


async def test_every_event_of_a_real_run_is_valid_against_the_schema(bus: Bus) -> None:
    ending, doomed = jobs()
    async with running(Dispatcher(bus, lease_s=5).run, Worker(bus, options=FAST).run):
        for job in [*ending, doomed]:
            await bus.publish_event(job)
        poisoned = new_id()
        poison_seq = await publish_poison(bus, poisoned)
        await asyncio.wait_for(until_started(bus, doomed.job_id), 15)
        await cancel_job(bus, doomed.job_id, reason="schema test")
        await asyncio.wait_for(until_cancelled(bus, doomed.job_id, 1), 15)
        for job in ending:
            await wait_for_job_end(bus, job.job_id)
        await asyncio.wait_for(until_rejected(bus, poisoned), 15)
    schema = event_json_schema()
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    items = await raw_log(bus)
    invalid: dict[int, str] = {}
    for item in items:
        event: dict[str, Any] = json.loads(item.data)
        if item.seq == poison_seq:
            # The schema refuses what the decoder refuses.
            assert item.error is not None and not validator.is_valid(event)
            continue
        assert item.error is None, item.error
        errors = list(validator.iter_errors(event))
        if errors:
            invalid[item.seq] = f"{event.get('type')}: {'; '.join(reasons(errors[0]))}"
    assert not invalid, invalid
    types = Counter(json.loads(item.data)["type"] for item in items)
    assert not EXPECTED_TYPES - set(types), types
