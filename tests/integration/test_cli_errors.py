"""Bad input at the command line: one clear line on stderr, a non-zero exit, no traceback,
and nothing published. Exit codes: 1 a failed command, 2 a wrong command line, 3 a server
not reached or refusing the credentials."""

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobstream.events import DEFAULT_LEASE_S, Bus, JobSubmitted, ensure_worker_consumer
from jobstream.services.stack import NatsServer, PostgresServer
from jobstream.services.worker import Worker, WorkerOptions
from tests.integration.test_worker_dispatcher import running

JOBSTREAM = [sys.executable, "-m", "jobstream.cli"]
UNREACHABLE_NATS = "nats://127.0.0.1:1"
UNREACHABLE_POSTGRES = "postgresql://postgres@127.0.0.1:1/jobstream"
NATS_USER = "bar"
NATS_PASSWORD = "s3cret-pass"
PG_PASSWORD = "pg-s3cret"


def jobstream(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*JOBSTREAM, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
        env={**os.environ, **(env or {})},
    )


def assert_clean_error(
    result: subprocess.CompletedProcess[str], *fragments: str, exit_code: int = 2
) -> None:
    assert result.returncode == exit_code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    message = result.stderr.strip()
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--kind", "nope"], ["unknown task kind 'nope'", "sum"]),
        (["--kind", "sum", "--args", "{a: 1"], ["--args is not valid JSON"]),
        (["--kind", "sum", "--args", "[1, 2]"], ["--args must be a JSON object"]),
        (["--tasks-file", "missing.ndjson"], ["cannot read tasks file missing.ndjson"]),
        ([], ["give either --kind"]),
        (["--kind", "sum", "--queue", "a.b"], ["queue 'a.b' has characters outside"]),
    ],
)
def test_submit_rejects_bad_input(
    nats_url: str, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    result = jobstream("submit", "--nats-url", nats_url, *args, cwd=tmp_path)
    assert_clean_error(result, *fragments)


def test_submit_rejects_malformed_tasks_file_line(nats_url: str, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.ndjson"
    tasks.write_text('{"kind": "sum", "args": {"a": 1, "b": 2}}\n{"kind": 3}\n')
    result = jobstream("submit", "--nats-url", nats_url, "--tasks-file", str(tasks), cwd=tmp_path)
    assert_clean_error(result, f"{tasks}:2")


def test_unreachable_nats_names_the_url_without_the_password(tmp_path: Path) -> None:
    url = "nats://bar:secret@127.0.0.1:1"
    result = jobstream("submit", "--nats-url", url, "--kind", "noop", cwd=tmp_path)
    assert_clean_error(result, "cannot reach NATS at nats://bar@127.0.0.1:1", exit_code=3)
    assert "secret" not in result.stderr + result.stdout


def test_unreachable_postgres_names_the_url(tmp_path: Path) -> None:
    url = "postgresql://postgres:secret@127.0.0.1:1/jobstream"
    result = jobstream("status", "01ABC", "--database-url", url, cwd=tmp_path)
    assert_clean_error(
        result, "cannot reach PostgreSQL at postgresql://postgres@127.0.0.1:1", exit_code=3
    )
    assert "secret" not in result.stderr + result.stdout


@pytest.fixture
def nats_with_password(tmp_path: Path) -> Iterator[NatsServer]:
    authorization = f'authorization {{ user: {NATS_USER}, password: "{NATS_PASSWORD}" }}'
    server = NatsServer(tmp_path / "nats-auth", extra_config=authorization).start()
    yield server
    server.stop()


def test_wrong_nats_password_is_an_authentication_failure(
    nats_with_password: NatsServer, tmp_path: Path
) -> None:
    port = nats_with_password.port
    url = f"nats://{NATS_USER}:wrong-pass@127.0.0.1:{port}"
    result = jobstream("submit", "--nats-url", url, "--kind", "noop", cwd=tmp_path)
    assert_clean_error(
        result,
        f"authentication failed for NATS at nats://{NATS_USER}@127.0.0.1:{port}",
        exit_code=3,
    )
    assert "wrong-pass" not in result.stderr + result.stdout
    assert "cannot reach" not in result.stderr


def test_right_nats_password_submits(nats_with_password: NatsServer, tmp_path: Path) -> None:
    url = f"nats://{NATS_USER}:{NATS_PASSWORD}@127.0.0.1:{nats_with_password.port}"
    result = jobstream("submit", "--nats-url", url, "--kind", "noop", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert NATS_PASSWORD not in result.stderr + result.stdout


@pytest.fixture
def postgres_with_password(tmp_path: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path / "pgdata", durable=False, password=PG_PASSWORD).start()
    yield server
    server.stop()


def test_wrong_postgres_password_is_an_authentication_failure(
    postgres_with_password: PostgresServer, tmp_path: Path
) -> None:
    port = postgres_with_password.port
    url = f"postgresql://postgres:wrong-pass@127.0.0.1:{port}/postgres"
    result = jobstream("status", "01ABC", "--database-url", url, cwd=tmp_path)
    assert_clean_error(
        result,
        f"authentication failed for PostgreSQL at postgresql://postgres@127.0.0.1:{port}/postgres",
        exit_code=3,
    )
    assert "wrong-pass" not in result.stderr + result.stdout
    assert "cannot reach" not in result.stderr


def test_right_postgres_password_gets_past_authentication(
    postgres_with_password: PostgresServer, tmp_path: Path
) -> None:
    result = jobstream(
        "status", "01ABC", "--database-url", postgres_with_password.url, cwd=tmp_path
    )
    # Connected: the read models are not there, which is another failure (exit 1).
    assert_clean_error(result, "the read models are not in this database", exit_code=1)
    assert PG_PASSWORD not in result.stderr + result.stdout


TOO_LONG = "q" * 5000
NAME_ARGUMENTS = [
    (["submit", "--kind", "noop", "--queue", TOO_LONG], "queue"),
    (["init", "--queue", "a.b"], "queue"),
    (["worker", "--queue", "a b"], "queue"),
    (["worker", "--worker-id", "w>"], "worker id"),
    (["cancel", "J" * 65], "job id"),
    (["status", ""], "job id"),
    (["replay", "--job", "a*b"], "job id"),
    (["dlq", "list", "--job", ""], "job id"),
    (["dlq", "retry", "T" * 97], "task id"),
]


@pytest.mark.parametrize(("args", "field"), NAME_ARGUMENTS)
def test_every_name_argument_is_checked_before_any_connection(
    tmp_path: Path, args: list[str], field: str
) -> None:
    """Unreachable servers: a command that connected first would exit 3, not 2."""
    servers = {
        "JOBSTREAM_NATS_URL": UNREACHABLE_NATS,
        "JOBSTREAM_DATABASE_URL": UNREACHABLE_POSTGRES,
    }
    result = jobstream(*args, cwd=tmp_path, env=servers)
    assert_clean_error(result, f"error: {field} ")
    assert len(result.stderr) < 300, "the value is quoted by a short prefix, not echoed whole"


async def test_oversized_queue_publishes_nothing(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    result = jobstream(
        "submit", "--nats-url", nats_url, "--kind", "noop", "--queue", TOO_LONG, cwd=tmp_path
    )
    assert_clean_error(result, "queue", "(5,000 characters) is too long: at most 64 characters")
    assert await bus.stream_last_seq() == 0


async def test_submit_warns_when_no_worker_runs_on_the_queue(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    async with running(Worker(bus, options=WorkerOptions(queue="busy")).run):
        await asyncio.sleep(0.5)  # its first pull request is waiting
        seen = await asyncio.to_thread(
            jobstream,
            "submit",
            "--nats-url",
            nats_url,
            "--kind",
            "noop",
            "--queue",
            "busy",
            cwd=tmp_path,
        )
    assert seen.returncode == 0, seen.stderr
    assert "warning" not in seen.stderr
    # The consumer outlives its workers (and `jobstream init` makes it): no worker now.
    await ensure_worker_consumer(bus.js, "idle", lease_s=DEFAULT_LEASE_S)
    idle = jobstream(
        "submit", "--nats-url", nats_url, "--kind", "noop", "--queue", "idle", cwd=tmp_path
    )
    assert "warning: no worker is running on queue 'idle'" in idle.stderr
    unseen = jobstream(
        "submit", "--nats-url", nats_url, "--kind", "noop", "--queue", "other", cwd=tmp_path
    )
    assert unseen.returncode == 0, unseen.stderr
    assert unseen.stderr.strip() == (
        "warning: no worker is running on queue 'other'; the job waits until one does "
        "(jobstream worker --queue other)"
    )
    assert unseen.stdout.strip(), "the job id is still printed"


async def test_replay_of_an_unknown_job_fails(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    submitted = jobstream("submit", "--nats-url", nats_url, "--kind", "noop", cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    known = jobstream("replay", "--job", job_id, "--nats-url", nats_url, cwd=tmp_path)
    assert known.returncode == 0, known.stderr
    assert job_id in known.stdout
    unknown = jobstream("replay", "--job", "NOSUCHJOB", "--nats-url", nats_url, cwd=tmp_path)
    assert_clean_error(unknown, "error: job 'NOSUCHJOB' not found in the event log", exit_code=1)
    assert unknown.stdout == ""


def test_no_servers_configured_says_how_to_start_them(tmp_path: Path) -> None:
    result = jobstream("submit", "--kind", "noop", cwd=tmp_path)
    assert_clean_error(result, "no NATS server", "jobstream up")


async def test_submit_publishes_job_and_prints_json(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    tasks = tmp_path / "tasks.ndjson"
    tasks.write_text('{"kind": "sum", "args": {"a": 1, "b": 2}}\n{"kind": "noop"}\n')
    result = jobstream(
        "submit", "--nats-url", nats_url, "--tasks-file", str(tasks), "--json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    job_id = json.loads(result.stdout)["job_id"]
    last = await bus.last_on_subject(f"evt.job.{job_id}")
    assert last is not None
    submitted = last[1]
    assert isinstance(submitted, JobSubmitted)
    assert submitted.task_count == 2
    assert submitted.tasks[0].args == {"a": 1, "b": 2}


PARTITION_ARGUMENTS = [
    (["projector", "--partitions", "2", "--partition", "3"], "use 0 to 1"),
    (["projector", "--partitions", "0"], "--partitions"),
    (["projector", "--partitions", "65"], "--partitions"),
    (["projector", "--partitions", "two"], "--partitions"),
    (["projector", "--partition", "-1"], "--partition"),
    (["projector", "--only", "ndjson", "--partitions", "2", "--partition", "1"], "one process"),
    (["replay", "--target", "ndjson", "--partitions", "2"], "--target postgres only"),
    (["replay", "--target", "postgres", "--partitions", "65"], "--partitions"),
    (["up", "--projectors", "0"], "--projectors"),
]


@pytest.mark.parametrize(("args", "fragment"), PARTITION_ARGUMENTS)
def test_partition_flags_are_checked_before_any_connection(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    """A wrong partition count or index: exit 2 with the flag named, before connecting (an
    unreachable server would give 3)."""
    servers = {
        "JOBSTREAM_NATS_URL": UNREACHABLE_NATS,
        "JOBSTREAM_DATABASE_URL": UNREACHABLE_POSTGRES,
    }
    result = jobstream(*args, cwd=tmp_path, env=servers)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in " ".join(result.stderr.replace("│", " ").split()), result.stderr
