"""`jobstream worker --processes N`: N worker processes, each a `jobstream worker` with the
same options, under one supervisor (services.stack.Supervisor)."""

import os
import sys

import typer

from jobstream.cli._nats_security import SECURITY_PARAMETERS, nats_security_environment
from jobstream.cli._runtime import check_nats_credentials, run, stop_on_signals
from jobstream.events import NatsSecurity
from jobstream.services.stack import ChildSpec, Supervisor

JOBSTREAM = [sys.executable, "-m", "jobstream.cli"]
# Passed to each child by its environment, not its command line (which any local user can
# read): URLs may hold a password, and the security flags do.
URL_VARIABLES = {"nats_url": "JOBSTREAM_NATS_URL", "database_url": "JOBSTREAM_DATABASE_URL"}
NOT_REPEATED = {"processes", *URL_VARIABLES, *SECURITY_PARAMETERS}
# Beyond the child's own drain (--grace-s): its start-up and the last events it publishes.
DRAIN_MARGIN_S = 5.0


def child_arguments(ctx: typer.Context, *, index: int) -> list[str]:
    """The command line of child `index` (1-based): this command's options as given,
    `--processes 1`, and the worker id (if one was given) suffixed with the index."""
    arguments = ["--processes", "1"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if param.name in NOT_REPEATED or value is None or not param.opts:
            continue
        if param.name == "worker_id":
            value = f"{value}-{index}"
        for item in value if param.multiple else [value]:
            arguments += [param.opts[0], str(item)]
    return arguments


def run_worker_processes(
    ctx: typer.Context,
    *,
    processes: int,
    nats_urls: list[str],
    grace_s: float,
    nats_security: NatsSecurity,
) -> int:
    """Run `processes` workers until SIGTERM/SIGINT, then drain them; the exit code."""
    environment = {
        **os.environ,
        **nats_security_environment(nats_security),
        URL_VARIABLES["nats_url"]: ",".join(nats_urls),
    }
    database_url = ctx.params.get("database_url")
    if database_url:
        environment[URL_VARIABLES["database_url"]] = str(database_url)
    specs = [
        ChildSpec(
            name=f"worker-{index}",
            command=[
                *JOBSTREAM,
                "worker",
                *child_arguments(ctx, index=index),
            ],
            environment=environment,
        )
        for index in range(1, processes + 1)
    ]
    supervisor = Supervisor(specs, grace_s=grace_s + DRAIN_MARGIN_S)

    async def main() -> int:
        await check_nats_credentials(nats_urls, nats_security)
        return await supervisor.run(stop_on_signals())

    return run(main())
