"""The CLI starts without loading what only running a command needs (the NATS client,
asyncpg, asyncio, FastAPI), and the lazily loaded packages offer every name they list."""

import importlib
import subprocess
import sys

import pytest

HEAVY = ("nats", "asyncpg", "asyncio", "fastapi", "jobstream.services.api")


def test_the_cli_starts_without_the_clients() -> None:
    probe = (
        f"import sys, jobstream.cli.app; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""


@pytest.mark.parametrize(
    "package", ["jobstream.events", "jobstream.projections", "jobstream.services.api"]
)
def test_every_listed_name_loads(package: str) -> None:
    module = importlib.import_module(package)
    assert set(module.__all__) == set(module._HOMES)
    for name in module.__all__:
        assert getattr(module, name) is not None
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_the_read_commands_read_without_the_web_stack() -> None:
    """`jobs`, `tasks`, `show`, `status` and `workers` use the API's reads, not its app."""
    probe = (
        "import sys; from jobstream.services.api import ("
        "jobs_page, tasks_page, task_detail, job_summary, running_tasks, workers_list,"
        " init_connection, live_work, read_liveness, LiveWork, dead_letters); "
        "print(','.join(m for m in ('fastapi', 'starlette', 'uvicorn') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == ""
