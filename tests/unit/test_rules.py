"""The read models' rule set (projections/_rules.py), without a database: what each event does
to the rows, and that a batch needs only the rows its events name (what the live projector
loads) to give the whole log's result."""

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from jobstream.events import (
    EMPTY_JSON,
    MAX_TASKS_PER_JOB,
    TASK_COUNT_COLUMNS,
    TASK_STATES,
    AttemptRow,
    BatchRow,
    ChunkFailure,
    ChunkResult,
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRejected,
    JobSealed,
    JobSubmitted,
    JobTasksAdded,
    SourceItem,
    TaskCancelled,
    TaskChunkFinished,
    TaskDeadLettered,
    TaskFailed,
    TaskRequeued,
    TaskSpec,
    TaskStarted,
    TaskSucceeded,
    WorkerForgotten,
    WorkerLost,
    WorkerRow,
    WorkerStarted,
    WorkerStopped,
    bucket_middle_s,
    chunk_id_for,
    duration_bucket,
    encode,
    subject_for,
)
from jobstream.projections import Partition
from jobstream.projections._fold import table_rows
from jobstream.projections._ndjson import result_line, result_lines
from jobstream.projections._postgres import _by_tasks
from jobstream.projections._rows import keys_of
from jobstream.projections._rules import (
    ReadModel,
    RejectedEvent,
    minute_of,
    result_of,
    task_ranges,
)
from tests.integration.test_replay_fold import chunk_finished, tricky_log

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def items(events: Iterable[Event], first_seq: int = 1) -> list[SourceItem]:
    return [
        SourceItem(seq, subject_for(event), encode(event), event, None)
        for seq, event in enumerate(events, start=first_seq)
    ]


def model_of(events: Sequence[Event]) -> ReadModel:
    model = ReadModel(list_batches=True)
    for item in items(events):
        model.apply_item(item)
    return model


def job(job_id: str = "J", count: int = 3, **fields: Any) -> JobSubmitted:
    return JobSubmitted(
        at=at(0),
        job_id=job_id,
        tasks=[TaskSpec(kind="sum", args={"a": 1}, count=count)],
        **fields,
    )


def succeeded(index: int, when: float, **fields: Any) -> TaskSucceeded:
    values: dict[str, Any] = {
        "at": at(when),
        "job_id": "J",
        "task_id": f"J-{index}",
        "kind": "sum",
        "args": {"a": 1},
        "worker_id": "w1",
        "attempt": 1,
        "result": {"sum": index},
        "duration_s": 0.5,
    }
    return TaskSucceeded(**(values | fields))


def raw(value: Any) -> msgspec.Raw:
    return msgspec.Raw(encode(value))


# --- jobs and their task rows ------------------------------------------------------------


def test_a_job_leaves_ranges_not_rows_and_a_task_event_makes_its_row_from_them() -> None:
    model = model_of([job(count=1_000_000), succeeded(999_999, 5)])
    assert model.jobs["J"].status == "running"
    assert model.jobs["J"].total_tasks == 1_000_000
    assert list(model.tasks) == ["J-999999"]  # the one row an event touched
    task = model.tasks["J-999999"]
    assert (task.task_index, task.kind, task.args, task.state) == (
        999_999,
        "sum",
        raw({"a": 1}),
        "succeeded",
    )
    (task_range,) = model.ranges["J"]
    assert (task_range.first_index, task_range.count, task_range.seq) == (0, 1_000_000, 1)


def test_the_replay_expands_the_ranges_around_the_rows_events_made() -> None:
    model = model_of([job(count=3), succeeded(1, 5)])
    rows = {row.task_id: row for row in model.expanded_tasks()}
    assert [(task_id, row.state) for task_id, row in sorted(rows.items())] == [
        ("J-0", "queued"),
        ("J-1", "succeeded"),
        ("J-2", "queued"),
    ]


def test_a_second_submission_of_a_job_changes_nothing() -> None:
    model = model_of([job(count=1), job(count=5, name="again")])
    assert (model.jobs["J"].total_tasks, model.jobs["J"].name) == (1, "")
    assert [r.count for r in model.ranges["J"]] == [1]


def test_a_job_over_the_task_limit_is_rejected_and_changes_nothing() -> None:
    model = ReadModel(list_batches=True)
    huge = JobSubmitted(
        job_id="H",
        tasks=[TaskSpec(kind="noop", count=MAX_TASKS_PER_JOB), TaskSpec(kind="noop")],
    )
    with pytest.raises(RejectedEvent):
        model.apply(1, huge)
    assert not model.jobs and not model.ranges
    (item,) = items([huge])
    model.apply_item(item)
    assert list(model.rejected) == [1]


def test_an_ended_job_stays_as_it_ended() -> None:
    model = model_of(
        [
            job(),
            JobFailed(at=at(10), job_id="J", succeeded=0, dead_lettered=1, duration_s=10),
            JobCompleted(at=at(11), job_id="J", succeeded=3, duration_s=11),
        ]
    )
    assert (model.jobs["J"].status, model.jobs["J"].duration_s) == ("failed", 10)


def test_task_events_of_an_unknown_job_make_no_rows() -> None:
    model = model_of([succeeded(0, 1)])
    assert not model.tasks and not model.jobs
    assert not model.result_rows()  # the results are the finished task rows
    assert model.workers["w1"].tasks_succeeded == 1


# --- tasks, attempts, results ------------------------------------------------------------


def test_a_late_second_success_changes_only_its_attempt() -> None:
    model = model_of(
        [job(), succeeded(0, 5), succeeded(0, 6, attempt=2, worker_id="w2", result="late")]
    )
    task = model.tasks["J-0"]
    assert (task.attempts, task.worker_id, task.result) == (1, "w1", raw({"sum": 0}))
    assert model.result_rows()["J-0"].output == raw({"sum": 0})
    assert sorted(model.attempt_view()["J-0"]) == [1, 2]
    assert model.workers["w2"].tasks_succeeded == 1


def test_a_new_attempt_ends_the_one_still_running_as_lease_expired() -> None:
    lease = at(60)
    model = model_of(
        [
            job(),
            TaskStarted(
                at=at(1), job_id="J", task_id="J-0", worker_id="w1", attempt=1, lease_deadline=lease
            ),
            TaskStarted(
                at=at(2), job_id="J", task_id="J-0", worker_id="w2", attempt=2, lease_deadline=lease
            ),
        ]
    )
    first, second = model.attempt_view()["J-0"][1], model.attempt_view()["J-0"][2]
    assert (first.outcome, first.error, first.finished_at) == (
        "failed",
        "lease expired",
        at(2),
    )
    assert second.outcome == "running"
    assert model.jobs["J"].started_at == at(1)


def test_a_finish_without_a_start_counts_back_its_duration() -> None:
    model = model_of([job(), succeeded(0, 10, duration_s=4.0)])
    assert model.tasks["J-0"].started_at == at(6)
    assert model.jobs["J"].started_at == at(6)


def test_an_attempt_that_succeeds_its_task_at_once_is_told_by_the_task_row() -> None:
    """No row of its own (`attempt_rows`): the `task_attempts` view shows it from the task's
    row, as the attempt row it used to be."""
    model = model_of([job(), succeeded(0, 10, duration_s=4.0, worker_id="w3")])
    assert not model.attempts.get("J-0")
    assert model.attempt_view()["J-0"] == {
        1: AttemptRow(
            task_id="J-0",
            attempt=1,
            job_id="J",
            worker_id="w3",
            outcome="succeeded",
            started_at=at(6),
            finished_at=at(10),
            duration_s=4.0,
        )
    }


def test_an_attempt_with_a_row_of_its_own_keeps_it() -> None:
    """Announced by its task.started, or failed before: the row is written, and the view
    shows it, not the task row's."""
    lease = at(9)
    started = TaskStarted(
        at=at(1), job_id="J", task_id="J-0", worker_id="w1", attempt=1, lease_deadline=lease
    )
    failed = TaskFailed(
        at=at(1), job_id="J", task_id="J-1", worker_id="w1", attempt=1, error="boom"
    )
    model = model_of([job(), started, succeeded(0, 2), failed, succeeded(1, 3, attempt=2)])
    assert model.attempts["J-0"][1].outcome == "succeeded"
    assert model.attempts["J-0"][1].started_at == at(1)
    assert [a.outcome for a in model.attempts["J-1"].values()] == ["failed"]
    assert [a.outcome for a in model.attempt_view()["J-1"].values()] == ["failed", "succeeded"]


def test_a_late_event_of_an_attempt_told_by_its_task_row_gives_it_a_row() -> None:
    """A late failure of the attempt that succeeded: its row is the task row's attempt, failed
    (its start kept); a late task.started of it makes no second, running, attempt."""
    lease = at(9)
    late_start = TaskStarted(
        at=at(3), job_id="J", task_id="J-0", worker_id="w1", attempt=1, lease_deadline=lease
    )
    late_failure = TaskFailed(
        at=at(4), job_id="J", task_id="J-0", worker_id="w2", attempt=1, error="late"
    )
    started_only = model_of([job(), succeeded(0, 2, duration_s=1.0), late_start])
    assert not started_only.attempts.get("J-0")
    failed = model_of([job(), succeeded(0, 2, duration_s=1.0), late_start, late_failure])
    row = failed.attempts["J-0"][1]
    assert (row.outcome, row.error, row.worker_id, row.started_at) == (
        "failed",
        "late",
        "w2",
        at(1),
    )
    assert failed.tasks["J-0"].state == "succeeded"
    assert failed.attempt_view()["J-0"] == {1: row}


def test_a_requeued_dead_letter_loses_its_result_and_reopens_its_job() -> None:
    model = model_of(
        [
            job(count=1),
            TaskDeadLettered(
                at=at(1), job_id="J", task_id="J-0", kind="sum", reason="x", attempts=3
            ),
            JobFailed(at=at(2), job_id="J", succeeded=0, dead_lettered=1, duration_s=2),
            TaskRequeued(at=at(3), job_id="J", task_id="J-0", kind="sum"),
        ]
    )
    assert model.tasks["J-0"].state == "queued"
    assert "J-0" not in model.result_rows()
    assert (model.jobs["J"].status, model.jobs["J"].finished_at) == ("running", None)


def test_a_chunk_is_its_tasks_own_events_at_its_seq() -> None:
    chunk = TaskChunkFinished(
        at=at(3),
        job_id="J",
        task_id=chunk_id_for("J", 0),
        worker_id="w4",
        attempt=1,
        duration_s=0.3,
        results=[ChunkResult(task_id="J-0", kind="sum", args={"a": 1}, result=1, duration_s=0.1)],
        failed=[ChunkFailure(task_id="J-1", kind="sum", error="boom", duration_s=0.2)],
    )
    model = model_of([job(), chunk])
    assert (model.tasks["J-0"].state, model.tasks["J-1"].state) == ("succeeded", "failed")
    assert chunk_id_for("J", 0) not in model.tasks
    assert model.result_rows()["J-0"].seq == 2  # the chunk's seq
    worker = model.workers["w4"]
    assert (worker.tasks_succeeded, worker.tasks_failed) == (1, 1)


# --- the result of a finished task: the results view and the NDJSON files agree ---------


def test_the_results_row_and_the_ndjson_line_are_one_result() -> None:
    """The event reports the task's args, as every worker does: the row of the results view
    (the finished task's) and the NDJSON line (the event's) are alike."""
    event = succeeded(0, 5, args={"a": 1})
    model = model_of([job(), event])
    row = model.result_rows()["J-0"]
    line = result_line(items([job(), event])[1])
    assert line is not None
    assert msgspec.json.decode(bytes(row.inputs)) == line.inputs == {"a": 1}
    assert (
        row.task_id,
        row.job_id,
        row.kind,
        msgspec.json.decode(bytes(row.output)),
        row.processed_by,
        row.duration_s,
        row.status,
        row.error,
        row.attempts,
        row.finished_at,
        row.seq,
    ) == (
        line.task_id,
        line.job_id,
        line.kind,
        line.output,
        line.worker_id,
        line.duration_s,
        line.status,
        line.error,
        line.attempts,
        line.at,
        line.seq,
    )


@pytest.mark.parametrize("args", [{"a": 7}, {}])
def test_a_result_shows_its_tasks_args_the_ndjson_line_the_events(args: dict[str, Any]) -> None:
    """The task stored args {"a": 1}; the event reports others: the task keeps its own, and
    its result shows them; the NDJSON line (made from the event alone) shows the event's."""
    event = succeeded(0, 5, args=args)
    model = model_of([job(), event])
    line = result_line(items([job(), event])[1])
    assert line is not None and line.inputs == args
    assert model.tasks["J-0"].args == model.result_rows()["J-0"].inputs == raw({"a": 1})


def test_a_dead_letter_result_carries_its_last_error_else_its_reason() -> None:
    dead = TaskDeadLettered(
        at=at(1), job_id="J", task_id="J-0", kind="sum", reason="exhausted", attempts=3
    )
    assert result_of(9, dead).error == "exhausted"
    with_error = msgspec.structs.replace(dead, last_error="ValueError")
    result = result_of(9, with_error)
    assert (result.error, result.output, result.duration_s, result.worker_id) == (
        "ValueError",
        None,
        None,
        "",
    )
    assert result.inputs == {}


def test_a_chunk_makes_a_line_per_success_from_the_same_rule() -> None:
    chunk = TaskChunkFinished(
        at=at(3),
        job_id="J",
        task_id=chunk_id_for("J", 0),
        worker_id="w4",
        attempt=1,
        duration_s=0.3,
        results=[
            ChunkResult(task_id=f"J-{i}", kind="sum", result=i, duration_s=float("nan"))
            for i in range(2)
        ],
    )
    (item,) = items([chunk], first_seq=4)
    lines = result_lines(item)
    assert [(line.task_id, line.part, line.parts, line.duration_s) for line in lines] == [
        ("J-0", 1, 2, None),
        ("J-1", 2, 2, None),
    ]


# --- workers ------------------------------------------------------------------------------


def test_workers_lost_seen_again_and_forgotten() -> None:
    started = WorkerStarted(
        at=at(0), worker_id="w1", host="h", pid=1, queues=["q"], concurrency=2, version="1"
    )
    model = model_of(
        [
            started,
            WorkerLost(at=at(1), worker_id="w1", last_seen=at(0.5)),
            job(),
            succeeded(0, 2),  # seen working again: active
            WorkerStopped(at=at(4), worker_id="w1"),
            WorkerLost(at=at(5), worker_id="w1"),  # only an active worker is lost
        ]
    )
    worker = model.workers["w1"]
    assert (worker.state, worker.tasks_succeeded, worker.stopped_at) == (
        "stopped",
        1,
        at(4),
    )
    model.apply(99, WorkerForgotten(at=at(6), worker_id="w1"))
    assert "w1" not in model.workers


def test_a_forgotten_worker_goes_from_every_partition_whatever_its_row_says() -> None:
    """A late task event of one partition's job makes that partition's row of a lost worker
    active again, and another partition's row stays lost: worker.forgotten drops both, so
    the partitions' rows merged are the rows of one partition (none), and a task event after
    it makes a row afresh, alike in every layout."""
    started = WorkerStarted(
        at=at(0), worker_id="w1", host="h", pid=1, queues=["q"], concurrency=2, version="1"
    )
    lost = WorkerLost(at=at(1), worker_id="w1")
    forgotten = WorkerForgotten(at=at(3), worker_id="w1")
    with_the_job = model_of([started, lost, job(), succeeded(0, 2)])
    assert with_the_job.workers["w1"].state == "active"
    without_it = model_of([started, lost])
    assert without_it.workers["w1"].state == "lost"
    for model in (with_the_job, without_it):
        model.apply(10, forgotten)
        assert "w1" not in model.workers
    with_the_job.apply(11, succeeded(1, 4))
    assert with_the_job.workers["w1"] == WorkerRow(
        worker_id="w1", tasks_succeeded=1, last_seen_at=at(4), updated_seq=11
    )


# --- streamed jobs ------------------------------------------------------------------------


def test_a_listed_batch_fills_in_the_rows_task_events_made_first() -> None:
    specs = [TaskSpec(kind="sum", args={"i": 1}, count=2)]
    live = ReadModel(list_batches=False)
    events: list[Event] = [
        JobSubmitted(at=at(0), job_id="S", sealed=False, tasks=[]),
        JobTasksAdded(at=at(1), job_id="S", batch=0, first_index=0, tasks=specs),
        TaskStarted(
            at=at(2), job_id="S", task_id="S-1", worker_id="w", attempt=1, lease_deadline=at(9)
        ),
    ]
    for item in items(events):
        live.apply_item(item)
    assert live.batches == [BatchRow(job_id="S", first_index=0, task_count=2, seq=2, listed=False)]
    assert (live.tasks["S-1"].kind, live.tasks["S-1"].args) == ("", EMPTY_JSON)
    live.list_batch("S", task_ranges("S", 0, specs, 2))  # the lister, later
    task = live.tasks["S-1"]
    assert (task.kind, task.args, task.state, task.updated_seq) == (
        "sum",
        raw({"i": 1}),
        "running",
        3,
    )
    replayed = model_of(events)
    assert _sorted_tables(replayed)["tasks"] == _sorted_tables(live)["tasks"]


def test_live_a_jobs_tasks_are_its_first_batch_and_wait_for_the_lister() -> None:
    """Live, a job.submitted records its tasks as a batch, unlisted: the tasks that end before
    the listing have their rows written once, by their events. The lister then loads only the
    rows it changes (not a finished row with its range's args) and makes the rest queued:
    the tables are the replay's, which lists at once."""
    submitted = job(count=5)
    log: list[Event] = [submitted, succeeded(0, 1), started(1, 2), succeeded(3, 3, args={})]
    live = ReadModel(list_batches=False)
    for item in items(log):
        live.apply_item(item)
    assert live.batches == [BatchRow(job_id="J", first_index=0, task_count=5, seq=1, listed=False)]
    assert not live.unmade_ranges()
    assert sorted(live.tasks) == ["J-0", "J-1", "J-3"]
    assert _counts(live, "J") == dict.fromkeys(TASK_STATES, 0) | {"succeeded": 2, "running": 1}

    # The lister's model: the job, and of the rows in the table (J-0, J-1, J-3) those the
    # listing changes: J-1 (no kind nor args yet), J-3 (its event reported no args).
    lister = ReadModel(list_batches=False)
    lister.jobs = dict(live.jobs)
    lister.tasks = {task_id: live.tasks[task_id] for task_id in ("J-1", "J-3")}
    lister.list_batch("J", task_ranges("J", 0, submitted.tasks, 1), present=[0, 1, 3])
    assert [(part.first_index, part.count) for part in lister.unmade_ranges()] == [(2, 1), (4, 1)]
    written = {**live.tasks, **lister.tasks}
    written |= {row.task_id: row for row in lister.expanded_tasks()}

    replayed = model_of(log)
    assert {row.task_id: row for row in replayed.expanded_tasks()} == written
    assert lister.jobs["J"] == replayed.jobs["J"]
    assert replayed.batches == [
        BatchRow(job_id="J", first_index=0, task_count=5, seq=1, listed=True)
    ]


# --- only the rows a batch names ------------------------------------------------------------


def _in_batches(log: Sequence[Event], size: int) -> ReadModel:
    """The live projector's way, in memory: for each batch, a model holding only the rows the
    batch's events name (`keys_of`), applied, and what it holds written back."""
    store = ReadModel(list_batches=True)
    batches: list[list[SourceItem]] = []
    all_items = items(log)
    for start in range(0, len(all_items), size):
        batches.append(all_items[start : start + size])
    for batch in batches:
        keys = keys_of(batch)
        part = ReadModel(list_batches=True)
        part.jobs = {k: store.jobs[k] for k in keys.jobs if k in store.jobs}
        tasks = {row.task_id: row for row in store.expanded_tasks()}
        part.tasks = {k: tasks[k] for k in keys.tasks if k in tasks}
        part.attempts = {k: dict(store.attempts[k]) for k in keys.tasks if k in store.attempts}
        part.workers = {k: store.workers[k] for k in keys.workers if k in store.workers}
        part.crawl.rows = {
            k: dict(row)
            | {m: dict(row[m]) for m in ("status_counts", "cache_counts", "response_ms")}
            for k, row in store.crawl.rows.items()
            if k[0] in keys.crawl_jobs
        }
        results = store.result_rows()
        minutes = keys.minutes | {
            minute_of(results[k].finished_at) for k in keys.requeued if k in results
        }
        part.minute_stats = {k: row for k, row in store.minute_stats.items() if k[0] in minutes}
        part.status_counts = dict(store.status_counts) if keys.jobs else {}
        for item in batch:
            part.apply_item(item)
        store.tasks = tasks | part.tasks
        store.ranges = {}
        for ranges in part.ranges.values():
            for task_range in ranges:
                for index in range(
                    task_range.first_index, task_range.first_index + task_range.count
                ):
                    row = task_range.row(index)
                    store.tasks.setdefault(row.task_id, row)
        for k in keys.workers:
            store.workers.pop(k, None)
        store.jobs |= part.jobs
        store.attempts |= part.attempts
        store.workers |= part.workers
        store.crawl.rows |= part.crawl.rows
        store.minute_stats |= part.minute_stats
        store.status_counts |= part.status_counts
        store.rejected |= part.rejected
        store.batches += part.batches
    return store


def _sorted_tables(model: ReadModel) -> dict[str, list[tuple[Any, ...]]]:
    return {table: sorted(rows, key=repr) for table, rows in table_rows(model).items()}


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_a_batch_needs_only_the_rows_its_events_name(size: int) -> None:
    log = tricky_log()
    whole = model_of(log)
    assert _sorted_tables(_in_batches(log, size)) == _sorted_tables(whole)


def test_the_ranges_leave_out_the_rows_written_whole() -> None:
    model = model_of([job(count=10), succeeded(0, 1), succeeded(5, 2), succeeded(9, 3)])
    parts = [(r.first_index, r.count) for r in model.unmade_ranges()]
    assert parts == [(1, 4), (6, 3)]
    task_range = model.ranges["J"][0]
    assert [(r.first_index, r.count) for r in task_range.without([])] == [(0, 10)]
    assert [(r.first_index, r.count) for r in task_range.without([3, 4, 20])] == [(0, 3), (5, 5)]
    assert task_range.without(list(range(10))) == []


def test_a_task_of_a_job_of_many_specs_is_found_by_its_index() -> None:
    specs = [TaskSpec(kind="sum", args={"i": i}) for i in range(5000)]
    model = model_of([JobSubmitted(at=at(0), job_id="J", tasks=specs), succeeded(4321, 1)])
    assert model.tasks["J-4321"].args == raw({"i": 4321})
    assert model.task("J", "J-5000") is None
    assert model.task("J", "J-x") is None


# --- counts kept: a job's tasks by state, the results per minute -------------------------------


def _counts(model: ReadModel, job_id: str) -> dict[str, int]:
    row = model.jobs[job_id]
    return {state: getattr(row, column) for state, column in TASK_COUNT_COLUMNS.items()}


def _grouped(model: ReadModel) -> dict[str, dict[str, int]]:
    """SELECT job_id, state, count(*) FROM tasks GROUP BY 1, 2, for every job."""
    counts: dict[str, dict[str, int]] = {
        job_id: dict.fromkeys(TASK_STATES, 0) for job_id in model.jobs
    }
    for task in model.expanded_tasks():
        counts[task.job_id][task.state] += 1
    return counts


def _kept(model: ReadModel) -> dict[str, dict[str, int]]:
    return {job_id: _counts(model, job_id) for job_id in model.jobs}


def _summed_results(
    model: ReadModel,
) -> dict[tuple[datetime, str, str], tuple[int, int, dict[str, int]]]:
    """What migration 008's recount makes of the results rows: their sums per minute, queue and
    kind (the queue the job has)."""
    sums: dict[tuple[datetime, str, str], tuple[int, int, dict[str, int]]] = {}
    for result in model.result_rows().values():
        job_row = model.jobs.get(result.job_id)
        key = (minute_of(result.finished_at), "" if job_row is None else job_row.queue, result.kind)
        ok, failed, durations = sums.get(key, (0, 0, {}))
        if result.status == "dead_lettered":
            failed += 1
        else:
            ok += 1
            if result.duration_s is not None:
                bucket = str(duration_bucket(result.duration_s))
                durations = durations | {bucket: durations.get(bucket, 0) + 1}
        sums[key] = (ok, failed, durations)
    return sums


def _rollup(model: ReadModel) -> dict[tuple[datetime, str, str], tuple[int, int, dict[str, int]]]:
    return {
        key: (row.succeeded, row.failed, row.durations)
        for key, row in model.minute_stats.items()
        if row.succeeded or row.failed
    }


def started(index: int, when: float, attempt: int = 1) -> TaskStarted:
    return TaskStarted(
        at=at(when),
        job_id="J",
        task_id=f"J-{index}",
        worker_id="w1",
        attempt=attempt,
        lease_deadline=at(when + 30),
    )


def dead(index: int, when: float) -> TaskDeadLettered:
    return TaskDeadLettered(
        at=at(when), job_id="J", task_id=f"J-{index}", kind="sum", reason="out", attempts=2
    )


def test_a_jobs_counts_follow_its_tasks_through_every_state() -> None:
    chunk = TaskChunkFinished(
        at=at(9),
        job_id="J",
        task_id=chunk_id_for("J", 6),
        worker_id="w1",
        attempt=1,
        duration_s=0.3,
        results=[ChunkResult(task_id="J-6", kind="sum", duration_s=0.1)],
        failed=[
            ChunkFailure(task_id="J-7", kind="sum", error="no"),
            ChunkFailure(task_id="J-8", kind="sum", error="no"),
        ],
    )
    log: list[Event] = [
        job(count=10),
        started(0, 1),
        succeeded(0, 2),
        started(1, 1),
        TaskFailed(at=at(2), job_id="J", task_id="J-1", worker_id="w1", attempt=1, error="x"),
        started(2, 1),
        dead(2, 3),
        dead(3, 3),
        TaskRequeued(at=at(4), job_id="J", task_id="J-3", kind="sum"),
        TaskCancelled(at=at(5), job_id="J", task_id="J-4"),
        started(5, 5),
        chunk,
        succeeded(0, 10, attempt=2),  # a late second success: a terminal state is never left
        TaskCancelled(at=at(11), job_id="J", task_id="J-0"),
        TaskCancelled(at=at(11), job_id="J", task_id="J-99"),  # not one of its tasks: no row
    ]
    model = model_of(log)
    assert _counts(model, "J") == {
        "queued": 2,  # J-3 (requeued) and J-9
        "running": 1,  # J-5
        "succeeded": 2,  # J-0, J-6
        "failed": 3,  # J-1, J-7, J-8
        "dead_lettered": 1,  # J-2
        "cancelled": 2,  # J-4, J-99
    }
    assert sum(_counts(model, "J").values()) == model.jobs["J"].total_tasks + 1  # J-99's row
    assert _kept(model) == _grouped(model)


def test_a_streamed_jobs_tasks_count_once_their_rows_are_made() -> None:
    """Live, a batch's rows come when the lister lists it: until then its tasks are in
    total_tasks and in no count (readers show them queued), but a row a task event made
    first counts at once, and once only."""
    header = JobSubmitted(at=at(0), job_id="J", sealed=False, tasks=[])
    batch = JobTasksAdded(
        at=at(0.1), job_id="J", batch=0, first_index=0, tasks=[TaskSpec(kind="sum", count=4)]
    )
    log: list[Event] = [header, batch, succeeded(1, 2), started(2, 2), started(7, 3)]
    live = ReadModel(list_batches=False)
    for item in items(log):
        live.apply_item(item)
    assert live.jobs["J"].total_tasks == 4
    assert _counts(live, "J") == dict.fromkeys(TASK_STATES, 0) | {"succeeded": 1, "running": 2}
    live.list_batch("J", task_ranges("J", 0, batch.tasks, 2))
    assert _counts(live, "J") == dict.fromkeys(TASK_STATES, 0) | {
        "queued": 2,
        "succeeded": 1,
        "running": 2,  # J-2, and J-7 beyond the job's tasks (its event made its row)
    }
    assert _kept(live) == _grouped(live)
    assert _kept(model_of(log)) == _kept(live)  # the replay lists at once: the same counts


def test_the_results_of_each_minute_are_summed_by_queue_and_kind() -> None:
    log: list[Event] = [
        job(count=6, queue="q1"),
        succeeded(0, 1, duration_s=0.5),
        succeeded(1, 2, duration_s=0.5),
        succeeded(2, 61, duration_s=2.0, kind="other"),
        succeeded(3, 62, duration_s=1e9),
        dead(4, 63),
        dead(5, 64),
        TaskRequeued(at=at(70), job_id="J", task_id="J-5", kind="sum"),
        succeeded(5, 125, duration_s=0.0),
    ]
    model = model_of(log)
    half = str(duration_bucket(0.5))
    assert _rollup(model) == {
        (T0, "q1", "sum"): (2, 0, {half: 2}),
        (T0 + timedelta(minutes=1), "q1", "other"): (1, 0, {str(duration_bucket(2.0)): 1}),
        # the requeue took J-5's dead letter back
        (T0 + timedelta(minutes=1), "q1", "sum"): (1, 1, {str(duration_bucket(1e9)): 1}),
        (T0 + timedelta(minutes=2), "q1", "sum"): (1, 0, {str(duration_bucket(0.0)): 1}),
    }
    assert _rollup(model) == _summed_results(model)
    assert {row.partition for row in model.minute_stats.values()} == {0}
    assert bucket_middle_s(duration_bucket(0.5)) == pytest.approx(0.5, rel=0.049)
    assert duration_bucket(0.0) == duration_bucket(-1.0) == duration_bucket(1e-9)


def test_the_rows_of_the_minutes_carry_the_partition() -> None:
    model = ReadModel(list_batches=True, partition=3)
    for item in items([job(), succeeded(0, 1)]):
        model.apply_item(item)
    assert [row.partition for row in model.minute_stats.values()] == [3]


def test_the_tricky_log_keeps_its_counts_and_sums_exact() -> None:
    model = model_of(tricky_log())
    assert _kept(model) == _grouped(model)
    assert _rollup(model) == _summed_results(model)


# --- counts kept: the jobs by status ----------------------------------------------------------


def _by_status(*partitions: ReadModel) -> dict[str, int]:
    """The kept jobs by status summed over the partitions, the statuses no job is in left out
    (what the API's count_jobs_by_status reads)."""
    sums: dict[str, int] = {}
    for model in partitions:
        for row in model.status_counts.values():
            sums[row.status] = sums.get(row.status, 0) + row.jobs
    return {status: jobs for status, jobs in sums.items() if jobs}


def _jobs_grouped(*partitions: ReadModel) -> dict[str, int]:
    """SELECT status, count(*) FROM jobs GROUP BY status, over the partitions' jobs."""
    counts: dict[str, int] = {}
    for model in partitions:
        for row in model.jobs.values():
            counts[row.status] = counts.get(row.status, 0) + 1
    return counts


def status_log() -> list[Event]:
    """Jobs that end in every status, one reopened, one submitted twice."""

    def task(job_id: str, index: int = 0) -> dict[str, Any]:
        return {"at": at(1), "job_id": job_id, "task_id": f"{job_id}-{index}"}

    return [
        job("Q"),  # queued
        job("Q"),  # a repeat: counted once
        JobSubmitted(at=at(0), job_id="S", sealed=False, tasks=[]),  # submitting
        JobSubmitted(at=at(0), job_id="T", sealed=False, tasks=[]),
        JobSealed(at=at(1), job_id="T", batches=0, task_count=0),  # submitting, then queued
        JobRejected(at=at(1), job_id="X", reason="unreadable", rejected_seq=1),  # made by it
        job("R", count=2),
        TaskStarted(**task("R"), worker_id="w1", attempt=1, lease_deadline=at(30)),  # running
        job("C", count=1),
        TaskSucceeded(**task("C"), kind="sum", worker_id="w1", attempt=1, duration_s=0.1),
        JobCompleted(at=at(2), job_id="C", succeeded=1, duration_s=2),  # completed
        job("F", count=1),
        TaskDeadLettered(**task("F"), kind="sum", reason="out", attempts=1),
        JobFailed(at=at(2), job_id="F", succeeded=0, dead_lettered=1, duration_s=2),  # failed
        job("K", count=1),
        JobCancelled(at=at(2), job_id="K"),  # cancelled
        JobCompleted(
            at=at(3), job_id="K", succeeded=0, duration_s=3
        ),  # an ended job stays as it ended
        job("Z", count=1),
        TaskDeadLettered(**task("Z"), kind="sum", reason="out", attempts=1),
        JobCompleted(at=at(2), job_id="Z", succeeded=0, dead_lettered=1, duration_s=2),
        TaskRequeued(**task("Z"), kind="sum"),  # completed, then running again
    ]


def test_the_jobs_by_status_follow_each_job_made_and_moved() -> None:
    model = model_of(status_log())
    assert _by_status(model) == {
        "queued": 2,  # Q, T
        "submitting": 1,  # S
        "rejected": 1,  # X
        "running": 2,  # R, Z (reopened)
        "completed": 1,  # C
        "failed": 1,  # F
        "cancelled": 1,  # K
    }
    assert _by_status(model) == _jobs_grouped(model)
    assert {row.partition for row in model.status_counts.values()} == {0}


def test_the_jobs_by_status_step_by_step() -> None:
    log = status_log()
    model = ReadModel(list_batches=True)
    for item in items(log):
        model.apply_item(item)
        assert _by_status(model) == _jobs_grouped(model), item.event


def test_the_jobs_by_status_are_kept_per_partition_and_summed() -> None:
    log = status_log()
    partitions = [ReadModel(list_batches=True, partition=index) for index in range(2)]
    for item in items(log):
        for model in partitions:
            if Partition(model.partition, 2).wants(item.subject):
                model.apply_item(item)
    assert all(model.jobs for model in partitions)  # both hold jobs
    for model in partitions:
        assert {row.partition for row in model.status_counts.values()} == {model.partition}
        assert _by_status(model) == _jobs_grouped(model)
    assert _by_status(*partitions) == _by_status(model_of(log))


def test_a_partition_moving_jobs_another_counted_may_go_below_zero() -> None:
    """Migration 010 counts the jobs already there into partition 0; partition 1 moves on the
    jobs it owns from there: its own counts go below 0, the sum stays right."""
    before = model_of([job("A"), job("B")])
    backfill = ReadModel(list_batches=True, partition=0)
    backfill.status_counts = dict(before.status_counts)
    partition = ReadModel(list_batches=True, partition=1)
    partition.jobs = dict(before.jobs)
    for item in items([JobCancelled(at=at(1), job_id="A")], first_seq=3):
        partition.apply_item(item)
    assert _by_status(partition) == {"queued": -1, "cancelled": 1}
    assert _by_status(backfill, partition) == {"queued": 1, "cancelled": 1}
    assert _by_status(backfill, partition) == _jobs_grouped(partition)


def test_a_read_batch_is_cut_into_runs_of_about_so_many_tasks() -> None:
    job = "j"
    # 4 tasks each: 3 results and a failure.
    chunks = [
        chunk_finished(job, first, first + 4, failed=frozenset({first + 3})) for first in (0, 4, 8)
    ]
    singles: list[Event] = [JobSubmitted(job_id=job, tasks=[TaskSpec(kind="noop", count=12)])]
    log = items([*singles, *chunks, *singles])

    runs = list(_by_tasks(log, 5))

    # 1 + 4 tasks, then 4 + 4 (a run ends once it holds `most`), then 1.
    assert [[item.seq for item in run] for run in runs] == [[1, 2], [3, 4], [5]]
    assert list(_by_tasks(log, 10**6)) == [log]
    assert list(_by_tasks([], 5)) == []
