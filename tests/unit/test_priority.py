"""Priority levels: a job's level, the subjects and consumers per level, the slot schedule."""

from collections import Counter
from datetime import UTC, datetime

import pytest

from jobstream.events import (
    LEVELS_HIGH_FIRST,
    ChunkFailure,
    JobSubmitted,
    PriorityLevel,
    TaskSpec,
    due_consumer_name,
    due_filter_subject,
    expand_chunks,
    expand_tasks,
    job_queue_purge_subjects,
    level_filter_subjects,
    level_of,
    task_due_subject,
    task_queue_subject,
    task_schedule_subject,
    worker_consumer_name,
)
from jobstream.services.worker._chunk import split
from jobstream.services.worker._levels import offer_order, record_served


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
    assert job_queue_purge_subjects("J") == ("task.*.*.J", "task.*.J", "task.*.*.J.*")


def test_subjects_of_waiting_and_due_tasks() -> None:
    """A waiting task's schedule is one token longer than any consumer's filter; its due
    subject has a token no level has."""
    waiting = task_schedule_subject("q", "J", "J-1", level=PriorityLevel.LOW)
    assert waiting == "task.q.low.J.J-1"
    assert task_due_subject("q", "J") == "task.q.due.J"
    assert due_filter_subject("q") == "task.q.due.*"
    assert "due" not in {level.value for level in LEVELS_HIGH_FIRST}


def test_consumer_names_of_levels_never_collide_across_queues() -> None:
    queues = ["a", "high", "a-high", "high-a", "low-workers-a", "workers-a", "a_low"]
    names = [worker_consumer_name(q, level) for q in queues for level in LEVELS_HIGH_FIRST]
    names += [due_consumer_name(q) for q in [*queues, "due", "due-workers-a"]]
    assert len(set(names)) == len(names)
    assert worker_consumer_name("q") == "workers-q"  # the name before levels


def test_a_level_passed_over_long_enough_is_offered_slots_first() -> None:
    high, normal, low = LEVELS_HIGH_FIRST
    passed = {high: 0, normal: 3, low: 8}
    assert offer_order(passed, 10) == [high, normal, low]
    assert offer_order({**passed, low: 9}, 10) == [low, high, normal]
    assert offer_order({high: 0, normal: 9, low: 12}, 10) == [normal, low, high]


def test_each_lower_level_with_work_gets_one_slot_in_share_every() -> None:
    """Every level always has work: who gets each of 1,000 slots."""
    passed = dict.fromkeys(LEVELS_HIGH_FIRST, 0)
    served: Counter[PriorityLevel] = Counter()
    for _ in range(1000):
        level = offer_order(passed, 10)[0]
        served[level] += 1
        record_served(passed, level)
    assert served[PriorityLevel.HIGH] >= 750
    assert 90 <= served[PriorityLevel.NORMAL] <= 120
    assert 90 <= served[PriorityLevel.LOW] <= 120
