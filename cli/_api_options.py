"""`jobstream api` flags of the API's safety layer (token, CORS, rate limit), each with its
JOBSTREAM_* fallback; checked before the API starts (a bad value is a usage error, exit 2)."""

from typing import Annotated

import typer

from jobstream.cli._runtime import usage_error

# The API's own defaults (services.api.DEFAULT_RATE_LIMIT_*; a unit test keeps them equal),
# written here so that `jobstream --help` does not import the API and its web stack.
DEFAULT_RATE_LIMIT_PER_S = 20.0
DEFAULT_RATE_LIMIT_BURST = 200


def _token(value: str | None) -> str | None:
    if value is not None and not value.strip():
        usage_error("the API token is empty: give a token, or unset JOBSTREAM_API_TOKEN")
    return value


def _origins(value: str | None) -> str | None:
    from jobstream.services.api._safety import check_origins

    try:
        check_origins(parse_origins(value))
    except ValueError as exc:
        usage_error(str(exc))
    return value


def parse_origins(value: str | None) -> list[str]:
    """Comma-separated origins, blanks dropped."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def rate_limit(per_s: float) -> float | None:
    """0 turns the limit off."""
    return per_s or None


ApiTokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="JOBSTREAM_API_TOKEN",
        show_envvar=True,
        callback=_token,
        help="Bearer token every request needs but /, /healthz and /readyz (the dashboard asks"
        " for it). Default: none needed. Prefer the environment variable: a flag shows in ps.",
    ),
]
CorsOriginsOption = Annotated[
    str | None,
    typer.Option(
        "--cors-origins",
        envvar="JOBSTREAM_API_CORS_ORIGINS",
        show_envvar=True,
        callback=_origins,
        help="Origins that may call the API from a browser, comma-separated"
        " (https://ops.example.com, or *). Default: none.",
    ),
]
RateLimitOption = Annotated[
    float,
    typer.Option(
        "--rate-limit",
        envvar="JOBSTREAM_API_RATE_LIMIT",
        show_envvar=True,
        min=0,
        max=1_000_000,
        help="Requests per second allowed to each client address (429 beyond); 0: no limit.",
    ),
]
RateLimitBurstOption = Annotated[
    int,
    typer.Option(
        "--rate-limit-burst",
        envvar="JOBSTREAM_API_RATE_LIMIT_BURST",
        show_envvar=True,
        min=1,
        max=1_000_000,
        help="Requests a client address may make at once before the rate applies.",
    ),
]

__all__ = [
    "DEFAULT_RATE_LIMIT_BURST",
    "DEFAULT_RATE_LIMIT_PER_S",
    "ApiTokenOption",
    "CorsOriginsOption",
    "RateLimitBurstOption",
    "RateLimitOption",
    "parse_origins",
    "rate_limit",
]
