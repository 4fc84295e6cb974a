"""`jobstream api`'s safety flags (cli/_api_options.py), through a small typer app that wires
them as cli/app.py does."""

import pytest
import typer
from typer.testing import CliRunner

from jobstream.cli._api_options import (
    DEFAULT_RATE_LIMIT_BURST,
    DEFAULT_RATE_LIMIT_PER_S,
    ApiTokenOption,
    CorsOriginsOption,
    RateLimitBurstOption,
    RateLimitOption,
    parse_origins,
    rate_limit,
)
from jobstream.services import api

app = typer.Typer()
seen: dict[str, object] = {}


@app.command()
def serve(
    token: ApiTokenOption = None,
    cors_origins: CorsOriginsOption = None,
    rate: RateLimitOption = DEFAULT_RATE_LIMIT_PER_S,
    burst: RateLimitBurstOption = DEFAULT_RATE_LIMIT_BURST,
) -> None:
    seen.update(
        token=token,
        origins=parse_origins(cors_origins),
        rate=rate_limit(rate),
        burst=burst,
    )


def test_defaults_are_the_apis() -> None:
    assert DEFAULT_RATE_LIMIT_PER_S == api.DEFAULT_RATE_LIMIT_PER_S
    assert DEFAULT_RATE_LIMIT_BURST == api.DEFAULT_RATE_LIMIT_BURST


def test_flags_and_environment() -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["--cors-origins", "https://a.example, http://b:8000", "--rate-limit", "0"],
        env={"JOBSTREAM_API_TOKEN": "t0k"},
    )
    assert result.exit_code == 0, result.output
    assert seen == {
        "token": "t0k",
        "origins": ["https://a.example", "http://b:8000"],
        "rate": None,
        "burst": DEFAULT_RATE_LIMIT_BURST,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token", " "], "the API token is empty"),
        (["--cors-origins", "a.example"], "CORS origin 'a.example'"),
        (["--rate-limit", "-1"], "--rate-limit"),
        (["--rate-limit-burst", "0"], "--rate-limit-burst"),
    ],
)
def test_bad_values_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
