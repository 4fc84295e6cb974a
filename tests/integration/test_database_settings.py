"""The PostgreSQL URL's TLS mode reaches asyncpg as given; a mode that cannot work is a clear
error; the pool size setting bounds the API's connections."""

import asyncio
import os
import subprocess

import asyncpg
import httpx
import pytest

from jobstream.services.stack import free_port
from tests.faults._harness import JOBSTREAM, REPO_ROOT
from tests.integration.test_cli_errors import assert_clean_error

API_START_TIMEOUT_S = 30.0


def status_of_unknown_job(database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*JOBSTREAM, "status", "01ABC", "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
        env={key: value for key, value in os.environ.items() if not key.startswith("JOBSTREAM_")},
    )


def with_sslmode(url: str, mode: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}sslmode={mode}"


@pytest.mark.parametrize("mode", ["disable", "prefer"])
def test_a_url_with_an_sslmode_connects(database_url: str, mode: str) -> None:
    result = status_of_unknown_job(with_sslmode(database_url, mode))
    # Connected and asked: the job is not there (exit 1), which only a connection can tell.
    assert_clean_error(result, "job '01ABC' not found", exit_code=1)


def test_a_wrong_sslmode_is_a_usage_error_naming_the_url(database_url: str) -> None:
    url = with_sslmode(database_url.replace("postgres@", "postgres:pg-secret@"), "sometimes")
    result = status_of_unknown_job(url)
    assert_clean_error(result, "cannot be used", "`sslmode` parameter must be one of", exit_code=2)
    assert "pg-secret" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tls_required_by_the_client_but_not_offered_cannot_connect(database_url: str) -> None:
    result = status_of_unknown_job(with_sslmode(database_url, "require"))
    assert_clean_error(result, "cannot reach PostgreSQL", "rejected SSL upgrade", exit_code=3)


async def test_the_pool_size_bounds_the_apis_connections(database_url: str) -> None:
    port = free_port()
    api = await asyncio.create_subprocess_exec(
        *JOBSTREAM, "api", "--database-url", database_url, "--port", str(port),
        "--nats-url", "nats://127.0.0.1:1",
        env={**os.environ, "JOBSTREAM_DATABASE_POOL_SIZE": "2"},
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            await _wait_until_up(client)
            answers = await asyncio.gather(
                *(client.get("/workers") for _ in range(20)),
                *(client.get("/jobs") for _ in range(20)),
            )
        assert all(answer.status_code == 200 for answer in answers)
        conn = await asyncpg.connect(database_url)
        try:
            held = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jobstream-api'"
            )
        finally:
            await conn.close()
        assert 1 <= held <= 2
    finally:
        if api.returncode is None:
            api.terminate()
        await api.wait()


async def _wait_until_up(client: httpx.AsyncClient) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + API_START_TIMEOUT_S
    while loop.time() < deadline:
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the API did not start")
