"""The liveness record's codec and the API's overlay of it on the read model."""

from datetime import UTC, datetime

import pytest

from jobstream.events import DecodeError, Liveness, RunningTask, decode_liveness, encode_liveness
from jobstream.services.api._liveness import (
    live_work,
    overlay_counts,
    overlay_last_seen,
    overlay_status,
    overlay_task,
)

NOW = 1_000_000.0


def record(at: float, *running: RunningTask, lease_s: float = 5.0) -> Liveness:
    return Liveness(at=at, lease_s=lease_s, queue="default", running=list(running))


def test_the_record_round_trips_and_an_old_worker_s_record_still_decodes() -> None:
    value = record(NOW, RunningTask(job_id="j", task_id="j-c0", tasks=7, started_at=NOW - 1))
    assert decode_liveness(encode_liveness(value)) == value
    old = decode_liveness(b'{"at": 5.0, "inflight": 3, "lease_s": 30.0}')
    assert (old.at, old.lease_s, old.running) == (5.0, 30.0, [])
    with pytest.raises(DecodeError):
        decode_liveness(b'{"at": 5.0, "running": [{"job_id": "a.b", "task_id": "x"}]}')


def test_live_work_counts_fresh_records_only() -> None:
    fresh = record(
        NOW - 1,
        RunningTask(job_id="j", task_id="j-0", started_at=NOW - 2),
        RunningTask(job_id="j", task_id="j-c4", tasks=3, started_at=NOW - 2),
        RunningTask(job_id="k", task_id="k-0", started_at=NOW - 2),
    )
    also = record(NOW, RunningTask(job_id="j", task_id="j-1", started_at=NOW))
    stale = record(NOW - 10.5, RunningTask(job_id="j", task_id="j-2", started_at=NOW - 11))
    work = live_work({"w1": fresh, "w2": also, "w3": stale}, NOW)
    # A chunk stands for its tasks: j-c4 with 3 tasks is j-4, j-5 and j-6.
    assert work.tasks_by_job == {"j": ["j-0", "j-4", "j-5", "j-6", "j-1"], "k": ["k-0"]}
    assert work.tasks_of("j") == ["j-0", "j-4", "j-5", "j-6", "j-1"]
    assert work.tasks_of("jx") == []
    assert work.live_task_ids(["k", "nope"]) == ["k-0"]
    assert work.worker_by_task == {
        "j-0": "w1",
        "j-4": "w1",
        "j-5": "w1",
        "j-6": "w1",
        "k-0": "w1",
        "j-1": "w2",
    }
    assert work.seen_at == {
        "w1": datetime.fromtimestamp(NOW - 1, tz=UTC),
        "w2": datetime.fromtimestamp(NOW, tz=UTC),
    }


def test_a_foreign_chunk_id_is_one_task() -> None:
    odd = record(NOW, RunningTask(job_id="j", task_id="j-cX", tasks=3, started_at=NOW))
    assert live_work({"w1": odd}, NOW).tasks_by_job == {"j": ["j-cX"]}


def test_overlay_counts_moves_live_waiting_tasks_to_running() -> None:
    counts = {"total": 10, "queued": 8, "running": 0, "succeeded": 2}
    assert overlay_counts(counts, {"queued": 8}) == {
        "total": 10,
        "queued": 0,
        "failed": 0,
        "running": 8,
        "succeeded": 2,
    }
    # A task between a failed attempt and its retry, being retried.
    assert overlay_counts({"queued": 5, "failed": 2, "running": 3}, {"failed": 1}) == {
        "queued": 5,
        "failed": 1,
        "running": 4,
    }
    # Never below 0: the two reads are a moment apart.
    assert overlay_counts({"queued": 1, "running": 0}, {"queued": 3}) == {
        "queued": 0,
        "failed": 0,
        "running": 1,
    }
    assert overlay_counts({"queued": 4, "running": 1}, {}) == {
        "queued": 4,
        "failed": 0,
        "running": 1,
    }


def test_overlay_status_task_and_last_seen() -> None:
    assert overlay_status("queued", 1) == "running"
    assert overlay_status("queued", 0) == "queued"
    assert overlay_status("completed", 3) == "completed"
    assert overlay_task("queued", None, "w1") == ("running", "w1")
    assert overlay_task("queued", None, None) == ("queued", None)
    assert overlay_task("failed", "w2", "w1") == ("running", "w1")
    assert overlay_task("succeeded", "w2", "w1") == ("succeeded", "w2")
    event_time = datetime(2026, 1, 1, tzinfo=UTC)
    live_time = datetime(2026, 1, 2, tzinfo=UTC)
    assert overlay_last_seen(event_time, live_time) == live_time
    assert overlay_last_seen(event_time, None) == event_time
