"""Every response of the API matches its OpenAPI document: Schemathesis, with all its checks
and phases (as `st run --checks all`), against the real app over a real nats-server and
PostgreSQL holding a projected job, so that 200s are exercised as well as 4xx."""

import asyncio
from typing import Any

import schemathesis
from fastapi import FastAPI
from schemathesis.core.failures import Failure
from schemathesis.engine import events
from schemathesis.openapi.checks import RejectedPositiveData

from jobstream.events import (
    Bus,
    JobSubmitted,
    TaskDeadLettered,
    TaskFailed,
    TaskSpec,
    TaskSucceeded,
    WorkerStarted,
    new_id,
)
from jobstream.services.api import create_app
from tests._serving import serving
from tests.integration.test_api_live import project_all

SEED = 20261201
MAX_EXAMPLES = 25
TOKEN = "conformance-token"
CONFIG: dict[str, Any] = {
    "seed": SEED,
    # The API runs with a token: Schemathesis sends it through the document's security scheme
    # (and checks that a request without it is refused).
    "auth": {"openapi": {"bearer": {"bearer": TOKEN}}},
    "checks": {"enabled": True},
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    # No state kept between runs (it would replay earlier crashes): each run is the same.
    "cache": {"enabled": False},
    "operations": [
        {
            # The live stream never ends: read each one for a moment only (Schemathesis stops
            # reading an event stream at the request timeout) and try fewer of them.
            "include-path": "/events/stream",
            "request-timeout": 0.25,
            "generation": {"max-examples": 5},
        }
    ],
}


def _opaque_cursor_refused(
    context: schemathesis.HookContext,
    failure: Failure,
    case: schemathesis.Case[Any],
    response: schemathesis.Response,
) -> bool:
    """Keep every failure but one false positive: a cursor is an opaque token that only this
    API issues, so a string the document allows (any) can still be refused, with a 422 that
    names the cursor alone. The document cannot say "a next_cursor we returned"."""
    if isinstance(failure, RejectedPositiveData) and response.status_code == 422:
        errors = response.json().get("errors", [])
        locations = {error.get("location") for error in errors}
        return locations != {"query parameter 'cursor'"}
    return True


def _failures(event: events.EngineEvent) -> list[str]:
    if isinstance(event, events.ScenarioFinished):
        found = []
        for checks in event.recorder.checks.values():
            for check in checks:
                if check.failure_info is not None:
                    failure = check.failure_info.failure
                    found.append(
                        f"{failure.operation}: {failure.code} {failure.title}\n"
                        f"{failure.message}\n{check.failure_info.code_sample}"
                    )
        return found
    if isinstance(event, events.NonFatalError):
        return [f"{event.label}: {event.info.format()}"]
    if isinstance(event, events.FatalError):
        return [f"Schemathesis failed: {event.exception!r}"]
    return []


def run_schemathesis(base_url: str) -> tuple[list[str], dict[str, set[int]]]:
    """Schemathesis's failures and errors, and the statuses each operation answered."""
    config = schemathesis.Config.from_dict(CONFIG)
    schema = schemathesis.openapi.from_url(
        f"{base_url}/openapi.json", config=config, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    schema.hook("filter_failure")(_opaque_cursor_refused)
    problems: list[str] = []
    statuses: dict[str, set[int]] = {}
    for event in schemathesis.engine.from_schema(schema).execute():
        problems.extend(_failures(event))
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for case_id, interaction in recorder.interactions.items():
                if interaction.response is not None and case_id in recorder.cases:
                    label = recorder.cases[case_id].value.operation.label
                    statuses.setdefault(label, set()).add(interaction.response.status_code)
    return problems, statuses


async def _seed(bus: Bus, database_url: str) -> str:
    """A job of three tasks, one succeeded, one failed and one dead-lettered, and its worker,
    in the log and the read models."""
    await bus.publish_event(
        WorkerStarted(
            worker_id="w1", host="h", pid=1, queues=["default"], concurrency=2, version="t"
        )
    )
    job = JobSubmitted(
        job_id=new_id(),
        name="conformance",
        labels={"team": "api"},
        tasks=[TaskSpec(kind="sum", args={"a": i, "b": 1}) for i in range(3)],
    )
    await bus.publish_event(job)
    done = TaskSucceeded(
        job_id=job.job_id,
        task_id=f"{job.job_id}-0",
        kind="sum",
        worker_id="w1",
        attempt=1,
        result={"sum": 1},
        duration_s=0.01,
    )
    await bus.publish_event(done, expected_last_subject_seq=0)
    failed = TaskFailed(
        job_id=job.job_id,
        task_id=f"{job.job_id}-1",
        worker_id="w1",
        attempt=1,
        error="boom",
        retryable=False,
    )
    await bus.publish_event(failed, expected_last_subject_seq=0)
    dead = TaskDeadLettered(
        job_id=job.job_id,
        task_id=f"{job.job_id}-2",
        kind="sum",
        reason="out of attempts",
        attempts=1,
        last_error="boom",
        worker_id="w1",
    )
    await bus.publish_event(dead, expected_last_subject_seq=0)
    await project_all(bus, database_url)
    return job.job_id


async def test_every_response_matches_the_openapi_document(
    bus: Bus, nats_url: str, database_url: str
) -> None:
    job_id = await _seed(bus, database_url)
    # No rate limit here: Schemathesis sends requests as fast as it can (tested apart).
    app: FastAPI = create_app(
        database_url=database_url, nats_urls=[nats_url], api_token=TOKEN, rate_limit_per_s=None
    )
    async with serving(app) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        assert (await client.get(f"/jobs/{job_id}/tasks")).status_code == 200
        assert (await client.get("/dead-letters")).json()["dead_letters"]
        # Schemathesis is synchronous: it runs in a thread while this loop serves the API.
        problems, statuses = await asyncio.to_thread(run_schemathesis, str(client.base_url))
    assert not problems, "\n\n".join(problems)
    assert set(statuses) == {f"GET {path}" for path in app.openapi()["paths"]}
    unsuccessful = {op: codes for op, codes in statuses.items() if not codes & set(range(200, 300))}
    assert not unsuccessful, f"operations never answered 2xx: {unsuccessful}"
