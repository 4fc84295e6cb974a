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


@pytest.mark.parametrize("package", ["jobstream.events", "jobstream.projections"])
def test_every_listed_name_loads(package: str) -> None:
    module = importlib.import_module(package)
    assert set(module.__all__) == set(module._HOMES)
    for name in module.__all__:
        assert getattr(module, name) is not None
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018
