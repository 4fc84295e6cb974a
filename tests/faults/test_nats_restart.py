"""Restart the nats-server (same store, same port) while two workers, the dispatcher and the
projector are busy: every task still ends exactly once, the job completes, and the read
model and the NDJSON files count each task once.

Durability: the server runs with its default fsync (every 2 minutes). A clean stop
(SIGTERM) flushes everything. A SIGKILL of the process loses nothing either: an acked
publish has already been written to the store files, so it sits in the OS page cache, which
outlives the process (only a crash of the machine inside the fsync interval could lose
acked writes; on one node, `sync_always=True` closes that window). What a SIGKILL may lose
is the server's record of recent acks and deletions, so some tasks can be delivered again:
the fence turns those into a no-op, which is what the test checks.
"""

import asyncio
import time
from pathlib import Path

import pytest

from jobstream.events import TASKS_STREAM, JobCompleted, TaskSucceeded
from jobstream.services.stack import NatsServer
from tests.faults._harness import (
    Processes,
    assert_each_task_ended_once,
    connected,
    ndjson_task_counts,
    query,
    queue_settled,
    read_log,
    submit,
    tasks_left,
    wait_for,
    wait_for_job_end,
    wait_for_worker_started,
    wait_until_projected,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

TASKS = 3000
# Paced so that the restart lands mid-way: 2 workers x 8 slots / 10 ms = at most 1600/s.
EXTRA_DURATION_S = 0.01


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_nats_restart_under_load(
    how: str, nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    url = nats_server.url
    data = tmp_path / "data"
    worker_args = ["--extra-duration-s", str(EXTRA_DURATION_S)]
    with Processes(tmp_path / "logs") as procs:
        procs.watch("nats-server", nats_server.log_file)
        everyone = [
            procs.dispatcher(url, data_dir=data),
            procs.projector(url, database_url=database_url, data_dir=data),
            procs.worker("w1", url, data_dir=data, extra=worker_args),
            procs.worker("w2", url, data_dir=data, extra=worker_args),
        ]
        async with connected([url]) as bus:
            await wait_for_worker_started(bus, "w1", "w2")
            job_id = await submit(
                url, data, "--kind", "sum", "--args", '{"a": 2, "b": 3}', "--count", str(TASKS)
            )

            async def under_way() -> bool:
                # Every task queued (a fresh server: one stream sequence per task) and a
                # quarter of them done.
                info = await bus.js.stream_info(TASKS_STREAM)
                return info.state.last_seq >= TASKS and 0 < info.state.messages < TASKS * 3 // 4

            await wait_for(under_way, timeout_s=30, what="a quarter of the tasks to be done")
            left_before = await tasks_left(bus)
            if how == "sigterm":
                await asyncio.to_thread(nats_server.stop)
            else:
                await asyncio.to_thread(nats_server.kill)
            await asyncio.sleep(0.5)  # the clients notice and start reconnecting
            await asyncio.to_thread(nats_server.start)
            restarted_at = time.time()
            assert nats_server.url == url  # same port, so the clients find it again

            ended = await wait_for_job_end(bus, job_id, timeout_s=90)
            await wait_for(lambda: queue_settled(bus), timeout_s=30, what="an empty queue")
            log = await read_log(bus)
            await wait_until_projected(bus, database_url, timeout_s=60)
            procs.assert_running(*everyone)

        assert 0 < left_before < TASKS, left_before
        assert isinstance(ended, JobCompleted) and ended.succeeded == TASKS, ended
        assert ended.at.timestamp() > restarted_at, "the job ended before the restart"
        ends = assert_each_task_ended_once(log, job_id, TASKS)
        assert all(
            isinstance(end, TaskSucceeded) and end.result == {"sum": 5} for end in ends.values()
        )
        tasks = await query(
            database_url,
            "SELECT state, count(*) AS n FROM jobstream.tasks WHERE job_id = $1 GROUP BY 1",
            job_id,
        )
        assert {row["state"]: row["n"] for row in tasks} == {"succeeded": TASKS}
        jobs = await query(
            database_url, "SELECT status FROM jobstream.jobs WHERE job_id = $1", job_id
        )
        assert [row["status"] for row in jobs] == ["completed"]
        results = await query(
            database_url, "SELECT count(*) AS n FROM jobstream.results WHERE job_id = $1", job_id
        )
        assert results[0]["n"] == TASKS
        ndjson = await wait_for(
            lambda: _ndjson_complete(data / "results", job_id),
            timeout_s=30,
            what="the NDJSON projector",
        )
        assert set(ndjson.values()) == {1}


async def _ndjson_complete(results_dir: Path, job_id: str) -> dict[str, int] | None:
    counts = ndjson_task_counts(results_dir, job_id)
    return dict(counts) if len(counts) >= TASKS else None
