"""Real servers for tests: a nats-server per test (port 0, temp store) and one PostgreSQL per
session with a fresh database per test, copied from a migrated template."""

import asyncio
import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from jobstream.events import Bus, ensure_buckets, ensure_streams
from jobstream.projections import migrate
from jobstream.services.stack import NatsServer, PostgresServer

TEMPLATE_DB = "jobstream_template"
_database_numbers = itertools.count(1)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    connected = await Bus.connect([nats_url], name="test")
    await ensure_streams(connected.js)
    await ensure_buckets(connected.js)
    yield connected
    await connected.close()


async def _create_template(admin_url: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        await conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await conn.close()
    template = await asyncpg.connect(admin_url.rsplit("/", 1)[0] + f"/{TEMPLATE_DB}")
    try:
        await migrate(template)
    finally:
        await template.close()


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """`JOBSTREAM_TEST_DATABASE_URL` names a server to use; else an embedded one is started."""
    external = os.environ.get("JOBSTREAM_TEST_DATABASE_URL")
    if external:
        asyncio.run(_create_template(external))
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="jobstream-pg-") as tmp:
        server = PostgresServer(Path(tmp) / "pgdata", durable=False).start()
        try:
            asyncio.run(_create_template(server.url))
            yield server.url
        finally:
            server.stop()


@pytest.fixture
async def database_url(postgres_admin_url: str) -> AsyncIterator[str]:
    name = f"jobstream_test_{os.getpid()}_{next(_database_numbers)}"
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    finally:
        await admin.close()
    yield postgres_admin_url.rsplit("/", 1)[0] + f"/{name}"
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()
