"""The least-privilege example of infra/nats: the config validates with the wheel's
nats-server, every role (the API's too) does its part of a job with nothing refused, and a
worker cannot append a job event."""

import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats.errors
import pytest

from jobstream.events import (
    DEFAULT_LEASE_S,
    Bus,
    JobCompleted,
    JobSubmitted,
    NatsSecurity,
    TaskCancelled,
    TaskSpec,
    encode,
    ensure_buckets,
    ensure_streams,
    ensure_worker_consumer,
    job_subject,
    new_id,
    task_event_subject,
    task_id_for,
)
from jobstream.services.stack import NatsServer, free_port, nats_server_binary
from tests._certs import make_certificates
from tests.faults._harness import REPO_ROOT, Processes, jobstream, wait_for, wait_for_job_end

INFRA_NATS = REPO_ROOT / "infra" / "nats"
ROLES = ("admin", "dispatcher", "worker", "projector", "api", "submitter")
# The server logs "Publish Violation" or "Subscription Violation"; the client hears
# "permissions violation for publish to ...".
SERVER_REFUSAL = "Violation"
CLIENT_REFUSAL = "permissions violation for publish"


def password_of(role: str) -> str:
    return f"{role}-pass"


@pytest.fixture
def role_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    """nats-server reads the passwords of accounts.conf from its environment."""
    for role in ROLES:
        monkeypatch.setenv(f"JOBSTREAM_{role.upper()}_PASSWORD", password_of(role))


def test_the_secure_example_validates(tmp_path: Path, role_passwords: None) -> None:
    for name in ("secure.conf", "accounts.conf"):
        shutil.copy(INFRA_NATS / name, tmp_path / name)
    make_certificates(tmp_path / "certs")
    result = subprocess.run(
        [nats_server_binary(), "-t", "-c", "secure.conf"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def roles_server(tmp_path: Path, role_passwords: None) -> Iterator[NatsServer]:
    accounts = (INFRA_NATS / "accounts.conf").read_text()
    server = NatsServer(tmp_path / "nats-roles", extra_config=accounts).start()
    yield server
    server.stop()


def as_role(role: str) -> list[str]:
    return ["--nats-user", role, "--nats-password", password_of(role)]


async def connect_as(server: NatsServer, role: str) -> Bus:
    security = NatsSecurity(user=role, password=password_of(role))
    return await Bus.connect([server.url], name=f"test-{role}", security=security)


async def test_each_role_runs_its_part_of_a_job(
    roles_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    url = roles_server.url
    admin = await connect_as(roles_server, "admin")
    try:
        await ensure_streams(admin.js)
        await ensure_buckets(admin.js)
        await ensure_worker_consumer(admin.js, "default", lease_s=DEFAULT_LEASE_S)
        with Processes(tmp_path / "logs") as processes:
            processes.watch("nats-server", roles_server.log_file)
            data = ["--nats-url", url, "--data-dir", str(tmp_path)]
            processes.start("dispatcher", "dispatcher", *data, *as_role("dispatcher"))
            processes.start("worker", "worker", *data, *as_role("worker"))
            processes.start(
                "projector",
                "projector",
                *data,
                "--database-url",
                database_url,
                *as_role("projector"),
            )
            out = await jobstream(
                "submit", *data, "--kind", "sum", "--args", '{"a": 1, "b": 2}',
                "--count", "3", *as_role("submitter"),
            )  # fmt: skip
            job_id = out.strip()
            end = await wait_for_job_end(admin, job_id, timeout_s=30)
            assert isinstance(end, JobCompleted)
            await _cancel_a_running_job(admin, data)
            port = free_port()
            processes.start(
                "api", "api", *data, "--database-url", database_url, "--port", str(port),
                *as_role("api"),
            )  # fmt: skip
            history = await _job_history(f"http://127.0.0.1:{port}", job_id)
            assert history[-1]["event"]["type"] == "job.completed"
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                # Whatever they answer, the server log below shows if NATS refused a read.
                for path in ("/readyz", "/workers", "/metrics"):
                    await client.get(path, timeout=10)
            processes.assert_running()
        assert SERVER_REFUSAL not in roles_server.log_file.read_text()
    finally:
        await admin.close()


async def _cancel_a_running_job(admin: Bus, data: list[str]) -> None:
    """The submitter cancels; the dispatcher purges the job's queue and ends its tasks."""
    out = await jobstream(
        "submit", *data, "--kind", "sleep", "--args", '{"seconds": 30}', *as_role("submitter")
    )
    job_id = out.strip()
    await jobstream("cancel", job_id, *data, *as_role("submitter"))
    subject = task_event_subject(job_id, task_id_for(job_id, 0))

    async def cancelled() -> bool:
        last = await admin.last_on_subject(subject)
        return last is not None and isinstance(last[1], TaskCancelled)

    await wait_for(cancelled, timeout_s=30, what="the dispatcher to cancel the task")


async def _job_history(api_url: str, job_id: str) -> list[dict[str, Any]]:
    """The job's events as the API reads them from the log (once the API is up)."""
    async with httpx.AsyncClient(base_url=api_url, timeout=5) as client:

        async def read() -> list[dict[str, Any]] | None:
            try:
                answer = await client.get(f"/jobs/{job_id}/events")
            except httpx.HTTPError:
                return None
            if answer.status_code != 200:
                return None
            events: list[dict[str, Any]] = answer.json()["events"]
            return events

        return await wait_for(read, timeout_s=30, what="the API to read the job's history")


async def test_a_worker_cannot_append_a_job_event(
    roles_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    admin = await connect_as(roles_server, "admin")
    worker = await connect_as(roles_server, "worker")
    try:
        await ensure_streams(admin.js)
        job = JobSubmitted(job_id=new_id(), tasks=[TaskSpec(kind="noop")])
        with caplog.at_level(logging.WARNING), pytest.raises(nats.errors.TimeoutError):
            # The server drops a publish it does not permit and says so on the connection:
            # the publisher gets no ack.
            await worker.js.publish(job_subject(job.job_id), encode(job), timeout=1)
        assert CLIENT_REFUSAL in caplog.text.lower()
        assert await admin.last_on_subject(job_subject(job.job_id)) is None
    finally:
        await worker.close()
        await admin.close()
