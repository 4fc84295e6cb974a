"""`jobstream bench`: jobstream's throughput, latency and recovery, measured in one run
against JetStream's own ceiling and the two Postgres designs it replaces."""

import sys
import time
from typing import Any

from jobstream.bench._options import SECTIONS, BenchOptions, build_options, parse_sections
from jobstream.bench._report import render, summarize, to_json
from jobstream.bench._run import Progress, run_once
from jobstream.events import JobstreamError

__all__ = [
    "SECTIONS",
    "BenchOptions",
    "Progress",
    "build_options",
    "parse_sections",
    "render",
    "run_bench",
    "stderr_progress",
    "summarize",
    "to_json",
]


async def run_bench(options: BenchOptions, progress: Progress) -> dict[str, Any]:
    """Every run in turn (fresh servers each), then the summary with medians."""
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    environment: dict[str, Any] = {}
    for index in range(options.runs):
        progress(f"run {index + 1} of {options.runs}")
        try:
            run, environment = await run_once(options, index + 1, progress)
        except JobstreamError:
            raise
        except Exception as exc:
            # A driver's or a timeout's error: one line for the user, the cause kept.
            raise JobstreamError(f"bench run {index + 1}: {type(exc).__name__}: {exc}") from exc
        runs.append(run)
    return summarize(
        runs, options=options, environment=environment, wall_s=time.monotonic() - started
    )


def stderr_progress() -> Progress:
    """Progress lines on stderr, each with the seconds since the bench started."""
    started = time.monotonic()

    def progress(line: str) -> None:
        print(f"bench [{time.monotonic() - started:6.1f}s] {line}", file=sys.stderr, flush=True)

    return progress
