"""Readiness tells the truth: a dispatcher that stops (SIGSTOP) while events wait makes the
API not ready, naming it; after SIGCONT it catches up and the API is ready again."""

import contextlib
import signal
from pathlib import Path

import httpx
import pytest

from jobstream.events import JobSubmitted, TaskSpec, new_id
from jobstream.services.api import create_app
from jobstream.services.stack import NatsServer
from tests._serving import serving
from tests.faults._harness import Processes, connected, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

READY_MAX_LAG_S = 2.0


async def test_readyz_follows_a_stopped_dispatcher(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    url = nats_server.url
    data = tmp_path / "data"
    app = create_app(database_url=database_url, nats_urls=[url], ready_max_lag_s=READY_MAX_LAG_S)
    async with serving(app) as client:
        with Processes(tmp_path / "logs") as procs:
            dispatcher = procs.dispatcher(url, data_dir=data)
            procs.projector(url, database_url=database_url, data_dir=data)
            async with connected([url]) as bus:

                async def readiness(ready: bool) -> dict[str, object] | None:
                    with contextlib.suppress(httpx.HTTPError):
                        response = await client.get("/readyz")
                        body: dict[str, object] = response.json()
                        consumers = body.get("consumers")
                        seen = isinstance(consumers, dict) and "dispatcher" in consumers
                        if seen and (response.status_code == 200) == ready:
                            return body
                    return None

                await bus.publish_event(
                    JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop")])
                )
                await wait_for(lambda: readiness(True), timeout_s=30, what="ready at first")

                dispatcher.send(signal.SIGSTOP)
                try:
                    for _ in range(3):
                        job = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop")])
                        await bus.publish_event(job)
                    body = await wait_for(
                        lambda: readiness(False), timeout_s=20, what="not ready while stopped"
                    )
                    problems = body["problems"]
                    assert isinstance(problems, list)
                    assert any("dispatcher" in str(p) for p in problems), problems
                    assert all("postgres" not in str(p) for p in problems), problems
                finally:
                    dispatcher.send(signal.SIGCONT)
                await wait_for(lambda: readiness(True), timeout_s=20, what="ready after SIGCONT")
                procs.assert_running()
