"""What waiting tasks rely on in nats-server's one-shot message schedules, on the work-queue
stream itself: checked against the server of the wheel, so an upgrade that changes any of it
fails here first."""

import asyncio
from datetime import timedelta

import nats.errors
import nats.js.errors
import pytest
from nats.js.api import StreamConfig

from jobstream.events import (
    TASKS_STREAM,
    Bus,
    Header,
    PriorityLevel,
    TaskMessage,
    at_pattern,
    decode_task_message,
    due_consumer_name,
    ensure_streams,
    ensure_worker_consumer,
    new_id,
    task_due_subject,
    task_id_for,
    task_queue_subject,
    task_schedule_subject,
    tasks_stream_config,
    utc_now,
)
from jobstream.services.stack import NatsServer

FIRES_IN_S = 1.0


def waiting_task() -> TaskMessage:
    job_id = new_id()
    return TaskMessage(job_id=job_id, task_id=task_id_for(job_id, 0), kind="noop")


async def test_a_schedule_fires_once_into_the_due_consumer_and_is_gone(bus: Bus) -> None:
    await ensure_worker_consumer(bus.js, "default", lease_s=5)
    task = waiting_task()
    at = utc_now() + timedelta(seconds=FIRES_IN_S)
    for _ in range(2):  # a retried publish, same message id: one schedule
        await bus.schedule_task("default", task, msg_id=f"{task.task_id}@x", at=at)
    assert (await bus.js.stream_info(TASKS_STREAM)).state.messages == 1
    due = await bus.js.pull_subscribe_bind(due_consumer_name("default"), stream=TASKS_STREAM)
    with pytest.raises(nats.errors.TimeoutError):
        await due.fetch(1, timeout=FIRES_IN_S / 2)  # not before its time
    [fired] = await due.fetch(1, timeout=5)
    assert utc_now() >= at
    assert fired.subject == task_due_subject("default", task.job_id)
    assert decode_task_message(fired.data) == task
    schedule = task_schedule_subject("default", task.job_id, task.task_id, level=task.level)
    assert (fired.headers or {}).get(Header.SCHEDULER.value) == schedule
    with pytest.raises(nats.js.errors.NotFoundError):  # the schedule went when it fired
        await bus.js.get_last_msg(TASKS_STREAM, schedule, direct=True)
    await fired.ack()
    await asyncio.sleep(FIRES_IN_S)
    with pytest.raises(nats.errors.TimeoutError):
        await due.fetch(1, timeout=0.5)
    await due.unsubscribe()  # else the bus's close waits out its drain for the fetch's reply
    assert (await bus.js.stream_info(TASKS_STREAM)).state.messages == 0
    # The message id is remembered after the schedule fired: a late retry is still no-op.
    await bus.schedule_task("default", task, msg_id=f"{task.task_id}@x", at=at)
    assert (await bus.js.stream_info(TASKS_STREAM)).state.messages == 0


async def test_a_schedule_must_target_its_own_stream(bus: Bus) -> None:
    task = waiting_task()
    subject = task_schedule_subject("default", task.job_id, task.task_id, level=task.level)
    headers = {
        Header.SCHEDULE.value: at_pattern(utc_now() + timedelta(seconds=5)),
        Header.SCHEDULE_TARGET.value: "evt.job.elsewhere",
    }
    with pytest.raises(nats.js.errors.BadRequestError):
        await bus.js.publish(subject, b"{}", headers=headers)


async def test_a_tasks_stream_made_before_schedules_is_upgraded_in_place(
    nats_server: NatsServer,
) -> None:
    bus = await Bus.connect([nats_server.url], name="test")
    try:
        old = tasks_stream_config().evolve(allow_msg_schedules=False, allow_rollup_hdrs=False)
        await bus.js.add_stream(old)
        task = waiting_task()
        await bus.publish_task("default", task, msg_id=task.task_id)
        await ensure_streams(bus.js)
        config: StreamConfig = (await bus.js.stream_info(TASKS_STREAM)).config
        assert config.allow_msg_schedules and config.allow_rollup_hdrs
        queued = task_queue_subject("default", task.job_id, level=PriorityLevel.NORMAL)
        kept = await bus.js.get_last_msg(TASKS_STREAM, queued, direct=True)
        assert decode_task_message(kept.data or b"") == task
    finally:
        await bus.close()
