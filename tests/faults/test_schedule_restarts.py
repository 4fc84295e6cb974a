"""A schedule outlives a SIGKILL of the nats-server: the server keeps firing it after its
restart (one tick for the periods it was down, then every period), the dispatcher goes on
turning ticks into jobs, and no tick becomes two jobs, though a killed server may forget
that some ticks were acked and deliver them again."""

import asyncio
from pathlib import Path

import pytest

from jobstream.events import SCHEDULES_STREAM, ensure_streams, schedule_subject
from jobstream.services.stack import NatsServer
from tests.faults._harness import Processes, connected, wait_for
from tests.integration.test_schedules import (
    TickWatch,
    add,
    assert_one_job_per_tick,
    every_tick_has_its_job,
    jobs_at_least,
    scheduled_jobs,
)
from tests.integration.test_worker_dispatcher import running

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

NAME = "survivor"


async def test_a_schedule_survives_a_nats_server_kill(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    url = nats_server.url
    with Processes(tmp_path / "logs") as processes:
        processes.watch("nats-server", nats_server.log_file)
        async with connected([url]) as bus:
            await ensure_streams(bus.js)
            await add(bus, NAME, "1s")
            ticks = TickWatch(bus, NAME)
            dispatcher = processes.dispatcher(url, data_dir=tmp_path / "data")
            async with running(ticks.poll):
                await wait_for(lambda: jobs_at_least(bus, NAME, 3), timeout_s=30, what="3 jobs")
                await asyncio.to_thread(nats_server.kill)
                await asyncio.sleep(2)
                await asyncio.to_thread(nats_server.start)
                assert nats_server.url == url
                before = len(await scheduled_jobs(bus, NAME))
                await wait_for(
                    lambda: jobs_at_least(bus, NAME, before + 3),
                    timeout_s=30,
                    what="3 jobs after the restart",
                )
                await bus.js.purge_stream(SCHEDULES_STREAM, subject=schedule_subject(NAME))
                await ticks.read()
            await wait_for(
                lambda: every_tick_has_its_job(bus, NAME, ticks),
                timeout_s=30,
                what="a job for every tick",
            )
            jobs = await scheduled_jobs(bus, NAME)
            processes.assert_running(dispatcher)
    print(f"{len(ticks.fired)} ticks, {len(jobs)} jobs across the server's kill")
    assert_one_job_per_tick(jobs, ticks.fired)
