"""The NATS credential and TLS flags (with JOBSTREAM_NATS_* fallbacks), added as one set to
every command that connects, and handed to it as one `NatsSecurity`."""

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from jobstream.cli._runtime import usage_error
from jobstream.events import NatsSecurity, NatsSecurityError

P = ParamSpec("P")
R = TypeVar("R")

PANEL = "NATS security"
# The command's parameter that receives the options.
TARGET = "nats_security"


def _text(flag: str, envvar: str, help_text: str) -> Any:
    return Annotated[
        str | None,
        typer.Option(flag, envvar=envvar, help=help_text, show_envvar=True, rich_help_panel=PANEL),
    ]


def _file(flag: str, envvar: str, help_text: str) -> Any:
    return Annotated[
        Path | None,
        typer.Option(
            flag,
            envvar=envvar,
            help=help_text,
            show_envvar=True,
            rich_help_panel=PANEL,
            dir_okay=False,
        ),
    ]


# Parameter name -> (its annotation, the NatsSecurity field it fills, its variable).
_OPTIONS: dict[str, tuple[Any, str, str]] = {
    "nats_user": (
        _text("--nats-user", "JOBSTREAM_NATS_USER", "NATS user (with --nats-password)."),
        "user",
        "JOBSTREAM_NATS_USER",
    ),
    "nats_password": (
        _text("--nats-password", "JOBSTREAM_NATS_PASSWORD", "NATS password."),
        "password",
        "JOBSTREAM_NATS_PASSWORD",
    ),
    "nats_token": (
        _text("--nats-token", "JOBSTREAM_NATS_TOKEN", "NATS authentication token."),
        "token",
        "JOBSTREAM_NATS_TOKEN",
    ),
    "nats_nkey_seed": (
        _file("--nats-nkey-seed", "JOBSTREAM_NATS_NKEY_SEED", "File with a NATS NKey user seed."),
        "nkey_seed_file",
        "JOBSTREAM_NATS_NKEY_SEED",
    ),
    "nats_creds": (
        _file("--nats-creds", "JOBSTREAM_NATS_CREDS", "NATS .creds file (user JWT and seed)."),
        "creds_file",
        "JOBSTREAM_NATS_CREDS",
    ),
    "nats_tls_ca": (
        _file("--nats-tls-ca", "JOBSTREAM_NATS_TLS_CA", "CA file to trust the NATS server by."),
        "tls_ca_file",
        "JOBSTREAM_NATS_TLS_CA",
    ),
    "nats_tls_cert": (
        _file("--nats-tls-cert", "JOBSTREAM_NATS_TLS_CERT", "Client certificate for NATS TLS."),
        "tls_cert_file",
        "JOBSTREAM_NATS_TLS_CERT",
    ),
    "nats_tls_key": (
        _file("--nats-tls-key", "JOBSTREAM_NATS_TLS_KEY", "Key of the client certificate."),
        "tls_key_file",
        "JOBSTREAM_NATS_TLS_KEY",
    ),
}

# The parameters `nats_security_options` adds to a command.
SECURITY_PARAMETERS = frozenset(_OPTIONS)


def nats_security_options(command: Callable[P, R]) -> Callable[..., R]:
    """Give `command` the NATS security flags in place of its `nats_security` parameter,
    which receives them as one checked `NatsSecurity` (a wrong combination: exit 2)."""
    signature = inspect.signature(command)
    if TARGET not in signature.parameters:
        raise TypeError(f"{command.__name__} has no {TARGET} parameter")
    kept = [param for param in signature.parameters.values() if param.name != TARGET]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=option, default=None)
        for name, (option, _, _) in _OPTIONS.items()
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        given = {_OPTIONS[name][1]: kwargs.pop(name) for name in _OPTIONS}
        try:
            kwargs[TARGET] = NatsSecurity(**given)
        except NatsSecurityError as exc:
            usage_error(str(exc))
        return command(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*kept, *added])  # type: ignore[attr-defined]
    return wrapper


def nats_security_environment(security: NatsSecurity) -> dict[str, str]:
    """The JOBSTREAM_NATS_* variables that give a child process the same options (in its
    environment, not its command line, where any local user could read a password)."""
    environment: dict[str, str] = {}
    for _, field, envvar in _OPTIONS.values():
        value = getattr(security, field)
        if isinstance(value, Path):
            environment[envvar] = str(value.resolve())
        elif value is not None:
            environment[envvar] = value
    return environment
