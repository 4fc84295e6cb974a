"""Priority levels: a job's level, the subjects and consumers per level, the slot schedule."""

from collections import Counter
from datetime import UTC, datetime

import pytest

from events import (
    LEVELS_HIGH_FIRST,
    ChunkFailure,
    JobSubmitted,
    PriorityLevel,
    TaskSpec,
    expand_chunks,
    expand_tasks,
    job_queue_purge_subjects,
    level_filter_subjects,
    level_of,
    task_queue_subject,
    worker_consumer_name,
)
from services.worker._chunk import split
from services.worker._levels import slot_order


@pytest.mark.parametrize(
    ("priority", "level"),
    [
        (10, PriorityLevel.HIGH),
        (1, PriorityLevel.HIGH),
        (0, PriorityLevel.NORMAL),
        (-1, PriorityLevel.LOW),
        (-(2**31), PriorityLevel.LOW),
    ],
)
def test_level_of_priority(priority: int, level: PriorityLevel) -> None:
    assert level_of(priority) is level


def test_task_messages_and_chunks_carry_the_jobs_level() -> None:
    job = JobSubmitted(job_id="J", priority=5, tasks=[TaskSpec(kind="noop", count=5)])
    assert {m.level for m in expand_tasks(job)} == {PriorityLevel.HIGH}
    chunked = JobSubmitted(
        job_id="J", priority=-2, chunk_size=2, tasks=[TaskSpec(kind="noop", count=5)]
    )
    assert {m.level for m in expand_chunks(chunked)} == {PriorityLevel.LOW}
    assert {m.level for m in expand_tasks(JobSubmitted(job_id="J", tasks=[]))} <= {
        PriorityLevel.NORMAL
    }


def test_a_chunks_failed_tasks_go_on_at_its_level() -> None:
    job = JobSubmitted(job_id="J", priority=3, chunk_size=3, tasks=[TaskSpec(kind="noop", count=3)])
    chunk = expand_chunks(job)[0]
    failures = [ChunkFailure(task_id="J-1", kind="noop", error="boom")]
    again, ended = split(chunk, failures, 1, retry_at=datetime.now(UTC))
    assert [m.task_id for m in again] == ["J-1"] and not ended
    assert again[0].level is PriorityLevel.HIGH


def test_subjects_and_filters_per_level() -> None:
    assert task_queue_subject("q", "J", level=PriorityLevel.LOW) == "task.q.low.J"
    assert level_filter_subjects("q", PriorityLevel.HIGH) == ["task.q.high.*"]
    # The normal level also takes the form before levels (one token shorter: no overlap).
    assert level_filter_subjects("q", PriorityLevel.NORMAL) == ["task.q.normal.*", "task.q.*"]
    assert job_queue_purge_subjects("J") == ("task.*.*.J", "task.*.J")


def test_consumer_names_of_levels_never_collide_across_queues() -> None:
    queues = ["a", "high", "a-high", "high-a", "low-workers-a", "workers-a", "a_low"]
    names = [worker_consumer_name(q, level) for q in queues for level in LEVELS_HIGH_FIRST]
    assert len(set(names)) == len(names)
    assert worker_consumer_name("q") == "workers-q"  # the name before levels


def test_slot_schedule_gives_lower_levels_a_fixed_share() -> None:
    firsts = Counter(slot_order(slot, 10)[0] for slot in range(1000))
    assert firsts == {PriorityLevel.HIGH: 800, PriorityLevel.NORMAL: 100, PriorityLevel.LOW: 100}
    for slot in range(20):
        assert sorted(slot_order(slot, 10)) == sorted(LEVELS_HIGH_FIRST)
