"""Every command that connects to NATS takes the security flags; children get the same
options by environment."""

from pathlib import Path

import pytest
import typer

from jobstream.cli._nats_security import SECURITY_PARAMETERS, nats_security_environment
from jobstream.cli.app import app
from jobstream.events import NatsSecurity

CONNECTING = [
    "init", "worker", "dispatcher", "projector", "api", "up", "submit", "cancel", "replay",
    "status", "demo",
]  # fmt: skip


def _commands() -> dict[str, typer.core.TyperCommand]:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    commands = dict(group.commands)
    dlq = commands.pop("dlq")
    assert isinstance(dlq, typer.core.TyperGroup)
    commands["dlq retry"] = dlq.commands["retry"]
    return commands  # type: ignore[return-value]


@pytest.mark.parametrize("name", [*CONNECTING, "dlq retry"])
def test_each_connecting_command_takes_the_security_flags(name: str) -> None:
    params = {param.name for param in _commands()[name].params}
    assert params >= SECURITY_PARAMETERS


def test_children_get_the_options_with_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    security = NatsSecurity(user="u", password="p")
    assert nats_security_environment(security) == {
        "JOBSTREAM_NATS_USER": "u",
        "JOBSTREAM_NATS_PASSWORD": "p",
    }
    seed = tmp_path / "user.nk"
    seed.write_text("SU")
    relative = NatsSecurity(nkey_seed_file=Path("user.nk"))
    assert nats_security_environment(relative) == {"JOBSTREAM_NATS_NKEY_SEED": str(seed)}
