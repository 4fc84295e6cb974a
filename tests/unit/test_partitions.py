"""Which partition of the projection applies which message (projections/_partitions.py),
and how partitions' checkpoints combine (events/_read_model.py)."""

from collections import Counter
from datetime import UTC, datetime

import pytest

from jobstream.events import (
    ChunkResult,
    JobSubmitted,
    SourceItem,
    TaskChunkFinished,
    TaskStarted,
    TaskSucceeded,
    WorkerStarted,
    chunk_id_for,
    combined_checkpoints,
    decode_item,
    encode,
    job_bucket,
    layout_of,
    partition_checkpoint,
)
from jobstream.projections import Partition, partition_of
from jobstream.projections._rules import ReadModel

AT = datetime(2026, 12, 2, tzinfo=UTC)


def _started(worker_id: str) -> WorkerStarted:
    return WorkerStarted(
        at=AT, worker_id=worker_id, host="h", pid=1, queues=["q"], concurrency=1, version="1"
    )


def test_jobs_spread_over_the_partitions() -> None:
    counts = Counter(partition_of(f"job-{n}", 4) for n in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert all(800 < count < 1200 for count in counts.values()), counts
    assert {partition_of(f"job-{n}", 1) for n in range(100)} == {0}


def test_a_job_and_its_tasks_go_to_one_partition_and_worker_events_to_all() -> None:
    layout = [Partition(index, 3) for index in range(3)]
    job = "0b9f2a"
    owner = partition_of(job, 3)
    for subject in (f"evt.job.{job}", f"evt.task.{job}.{job}-17"):
        assert [p.wants(subject) for p in layout] == [i == owner for i in range(3)]
    assert [p.wants("evt.worker.w1") for p in layout] == [True, True, True]
    assert [p.parks("evt.worker.w1") for p in layout] == [True, False, False]
    # No job's subject: partition 0's.
    for subject in ("evt.nothing", "evt.task.only-a-job"):
        assert [p.wants(subject) for p in layout] == [True, False, False]
    assert all(Partition().wants(s) for s in ("evt.job.x", "evt.worker.w", "evt.other"))


@pytest.mark.parametrize(("index", "count"), [(0, 0), (1, 1), (-1, 2), (2, 2), (0, 65)])
def test_a_partition_outside_its_count_is_refused(index: int, count: int) -> None:
    with pytest.raises(ValueError, match="partition"):
        Partition(index, count)


def test_checkpoint_names_and_their_combination() -> None:
    assert partition_checkpoint("postgres", 0, 1) == "postgres"
    assert partition_checkpoint("postgres", 1, 2) == "postgres/1-of-2"
    assert layout_of("postgres/1-of-2") == ("postgres", 1, 2)
    assert layout_of("postgres") == ("postgres", 0, 1)
    assert layout_of("odd/name") == ("odd/name", 0, 1)
    # The slowest partition; a partition with no row yet is at 0.
    assert combined_checkpoints({"postgres/0-of-2": 9, "postgres/1-of-2": 7}) == {"postgres": 7}
    assert combined_checkpoints({"postgres/0-of-3": 9, "postgres/1-of-3": 7}) == {"postgres": 0}
    assert combined_checkpoints({"postgres": 5, "other": 3}) == {"postgres": 5, "other": 3}


def _item(seq: int, subject: str, event: object) -> SourceItem:
    return decode_item(seq, subject, encode(event))


def test_an_event_on_a_subject_not_its_own_is_parked() -> None:
    started = TaskStarted(
        at=AT, job_id="a", task_id="a-0", worker_id="w", attempt=1, lease_deadline=AT
    )
    model = ReadModel(list_batches=True)
    model.apply_item(_item(1, "evt.task.b.b-0", started))
    model.apply_item(_item(2, "evt.worker.other", _started("w")))
    model.apply_item(_item(3, "evt.worker.w", _started("w")))
    assert "of task 'a-0' on 'evt.task.b.b-0'" in model.rejected[1].error
    # Stored with another bucket than its job's (a foreign client wrote it so): parked by
    # whichever partition it reaches.
    wrong = f"evt.task.a.a-0.{(job_bucket('a') + 1) % 64}"
    assert all(Partition(index, 4).wants(wrong) for index in range(4))
    model.apply_item(_item(4, wrong, started))
    model.apply_item(_item(5, f"evt.task.a.a-0.{job_bucket('a')}", started))
    assert sorted(model.rejected) == [1, 2, 4]
    assert list(model.workers) == ["w"]


def test_an_event_naming_another_jobs_task_is_parked() -> None:
    """On its own job's subject, but naming a task of another job (whose partition keeps that
    task's rows): parked, and no row of either job changes."""
    model = ReadModel(list_batches=True)
    model.apply_item(_item(1, "evt.job.a", JobSubmitted(at=AT, job_id="a", tasks=[])))
    foreign: list[TaskSucceeded | TaskChunkFinished] = [
        succeeded("a", "b-5"),
        succeeded("a", "a-x"),
        succeeded("a", "a-05"),
        succeeded("a", "a-cx"),
        TaskChunkFinished(
            at=AT,
            job_id="a",
            task_id=chunk_id_for("a", 0),
            worker_id="w",
            attempt=1,
            duration_s=0.1,
            results=[ChunkResult(task_id="b-0", kind="sum", duration_s=0.1)],
        ),
    ]
    for seq, event in enumerate(foreign, start=2):
        model.apply_item(_item(seq, f"evt.task.a.{event.task_id}", event))
    assert sorted(model.rejected) == [2, 3, 4, 5, 6]
    assert "names 'b-5', not one of its tasks" in model.rejected[2].error
    assert not model.result_rows() and not model.attempts
    # Its own tasks and chunks pass.
    chunk_started = TaskStarted(
        at=AT, job_id="a", task_id="a-c100", worker_id="w", attempt=1, lease_deadline=AT
    )
    model.apply_item(_item(7, "evt.task.a.a-5", succeeded("a", "a-5")))
    model.apply_item(_item(8, "evt.task.a.a-c100", chunk_started))
    assert sorted(model.rejected) == [2, 3, 4, 5, 6]
    assert set(model.result_rows()) == {"a-5"}


def succeeded(job_id: str, task_id: str) -> TaskSucceeded:
    return TaskSucceeded(
        at=AT,
        job_id=job_id,
        task_id=task_id,
        kind="sum",
        worker_id="w",
        attempt=1,
        result=1,
        duration_s=0.1,
    )


def test_worker_rows_carry_their_partition_and_only_partition_0_parks_worker_subjects() -> None:
    for index in (0, 1):
        model = ReadModel(list_batches=True, partition=index)
        model.apply_item(_item(1, "evt.worker.w", _started("w")))
        model.apply_item(decode_item(2, "evt.worker.x", b"not json"))
        model.apply_item(SourceItem(3, "evt.job.j", b"", None, None, skipped=True))
        assert model.workers["w"].partition == index
        assert sorted(model.rejected) == ([2] if index == 0 else [])
        assert model.last_seq == 3


def test_a_partitions_consumer_takes_its_buckets_job_and_worker_events() -> None:
    assert Partition().filter_subjects() == ["evt.>"]
    second = Partition(1, 4).filter_subjects()
    buckets = [s for s in second if s.count(".") == 4]
    assert buckets == [f"evt.task.*.*.{b}" for b in range(1, 64, 4)]
    assert set(second) - set(buckets) == {"evt.task.*.*", "evt.job.*", "evt.worker.*"}
    assert {"evt.*", "evt.task.*"} <= set(Partition(0, 4).filter_subjects())
    # A stored task event (with its bucket) goes to the partition of its job.
    job = "0b9f2a"
    stored = f"evt.task.{job}.{job}-3.{partition_of(job, 64)}"
    assert [Partition(i, 4).wants(stored) for i in range(4)] == [
        i == partition_of(job, 4) for i in range(4)
    ]
