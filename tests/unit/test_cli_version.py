"""`jobstream --version`, and shell completion offered."""

from importlib.metadata import version

from typer.testing import CliRunner

from jobstream.cli.app import app


def test_version_prints_the_installed_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"jobstream {version('jobstream')}"


def test_help_offers_shell_completion() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "--install-completion" in result.output
