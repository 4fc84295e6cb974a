"""A 3-node nats-server cluster on loopback with R3 streams, consumer and buckets: the
processes leave the replica counts alone, and a SIGKILL of a stream's leader under load
loses no task, ends none twice and stops no process."""

import time
from pathlib import Path

import pytest

from jobstream.events import (
    DISPATCHER_BUCKET,
    EVENTS_STREAM,
    LIVENESS_BUCKET,
    TASKS_STREAM,
    Bus,
    JobCompleted,
    TaskSucceeded,
    WorkerLost,
    ensure_buckets,
    ensure_streams,
    ensure_worker_consumer,
    worker_consumer_name,
)
from jobstream.services.stack import NatsCluster
from tests.faults._harness import (
    LEASE_S,
    Processes,
    assert_each_task_ended_once,
    connected,
    events_of,
    queue_settled,
    read_log,
    submit,
    wait_for,
    wait_for_job_end,
    wait_for_worker_started,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(170)]

REPLICAS = 3
TASKS = 2000
# Paced so that the kill lands mid-way.
EXTRA_DURATION_S = 0.01


async def replica_counts(bus: Bus) -> dict[str, int]:
    """Replicas of both streams, both buckets and the queue's consumer."""
    js = bus.js
    names = [EVENTS_STREAM, TASKS_STREAM, f"KV_{LIVENESS_BUCKET}", f"KV_{DISPATCHER_BUCKET}"]
    counts = {name: (await js.stream_info(name)).config.num_replicas or 0 for name in names}
    consumer = await js.consumer_info(TASKS_STREAM, worker_consumer_name("default"))
    counts["consumer"] = consumer.config.num_replicas or 0
    return counts


async def leader_of(bus: Bus, stream: str) -> str | None:
    cluster = (await bus.js.stream_info(stream)).cluster
    return cluster.leader if cluster is not None else None


# The log, the work queue, and the dispatcher's snapshot bucket: leaders are placed at random,
# so each is named to be sure its loss is covered.
@pytest.mark.parametrize("stream", [EVENTS_STREAM, TASKS_STREAM, f"KV_{DISPATCHER_BUCKET}"])
async def test_stream_leader_killed_under_load(stream: str, tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "cluster", size=REPLICAS)
    with Processes(tmp_path / "logs") as procs:
        for node in cluster.nodes:
            procs.watch(node.server_name, node.log_file)
        try:
            cluster.start()
            await _kill_leader_under_load(cluster, procs, stream, tmp_path / "data")
        finally:
            cluster.kill()


async def _kill_leader_under_load(
    cluster: NatsCluster, procs: Processes, stream: str, data: Path
) -> None:
    url = cluster.url  # every node, comma-separated
    async with connected(cluster.urls) as bus:

        async def define() -> bool:
            # What `jobstream init --replicas 3` does.
            await ensure_streams(bus.js, replicas=REPLICAS)
            await ensure_worker_consumer(bus.js, "default", lease_s=LEASE_S, replicas=REPLICAS)
            await ensure_buckets(bus.js, replicas=REPLICAS)
            return True

        await wait_for(define, timeout_s=30, what="JetStream on the cluster")
        worker_args = ["--extra-duration-s", str(EXTRA_DURATION_S)]
        everyone = [
            procs.dispatcher(url, data_dir=data),
            procs.worker("w1", url, data_dir=data, extra=worker_args),
            procs.worker("w2", url, data_dir=data, extra=worker_args),
        ]
        await wait_for_worker_started(bus, "w1", "w2")
        job_id = await submit(
            url, data, "--kind", "sum", "--args", '{"a": 1, "b": 2}', "--count", str(TASKS)
        )
        # Every process (submit too) ran the start-up definitions with no replica count of
        # its own: nothing was scaled down.
        assert set((await replica_counts(bus)).values()) == {REPLICAS}

        async def under_way() -> bool:
            info = await bus.js.stream_info(TASKS_STREAM)
            return info.state.last_seq >= TASKS and 0 < info.state.messages < TASKS * 3 // 4

        await wait_for(under_way, timeout_s=60, what="a quarter of the tasks to be done")
        leader = await leader_of(bus, stream)
        assert leader is not None
        killed = cluster.node(leader)
        killed.kill()
        killed_at = time.monotonic()
        killed_wall = time.time()

        async def new_leader() -> str | None:
            elected = await leader_of(bus, stream)
            return elected if elected != killed.server_name else None

        elected = await wait_for(new_leader, timeout_s=30, what=f"a new leader of {stream}")
        failover_s = time.monotonic() - killed_at
        ended = await wait_for_job_end(bus, job_id, timeout_s=120)
        await wait_for(lambda: queue_settled(bus), timeout_s=30, what="an empty queue")
        log = await read_log(bus)
        procs.assert_running(*everyone)

    assert isinstance(ended, JobCompleted) and ended.succeeded == TASKS, ended
    assert ended.at.timestamp() > killed_wall, "the job ended before the kill"
    ends = assert_each_task_ended_once(log, job_id, TASKS)
    assert all(isinstance(e, TaskSucceeded) and e.result == {"sum": 3} for e in ends.values())
    # With 1.5 s leases, a failover longer than two leases may get a live worker reported
    # lost (it could not renew its liveness key meanwhile): shown, not asserted.
    lost = [e.worker_id for e in events_of(log) if isinstance(e, WorkerLost)]
    print(
        f"killed {killed.server_name}, leader of {stream}; the test saw {elected} lead it "
        f"{failover_s:.1f}s later; the job took {ended.duration_s:.1f}s; reported lost: {lost}"
    )
