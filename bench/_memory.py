"""Resident memory of the worker processes over a measured span: does it stay flat?"""

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import psutil

MIB = 1024 * 1024
SAMPLE_INTERVAL_S = 0.5


def _rss_mib(pid: int) -> float | None:
    try:
        return psutil.Process(pid).memory_info().rss / MIB
    except psutil.Error:
        return None


@dataclass(frozen=True, kw_only=True)
class RssReport:
    """MiB per process at the span's start, its peak and its end."""

    start_mib: dict[str, float]
    peak_mib: dict[str, float]
    end_mib: dict[str, float]
    # The largest end-over-start growth among the processes, in percent.
    growth_percent: float


class RssSampler:
    """Samples the RSS of named processes at most every `interval_s`."""

    def __init__(self, pids: Mapping[str, int], *, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.pids = dict(pids)
        self.interval_s = interval_s
        self._start: dict[str, float] = {}
        self._peak: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._sampled_at = 0.0

    def _take(self) -> dict[str, float]:
        sizes = {name: _rss_mib(pid) for name, pid in self.pids.items()}
        present = {name: size for name, size in sizes.items() if size is not None}
        for name, size in present.items():
            self._peak[name] = max(size, self._peak.get(name, 0.0))
        self._last |= present
        self._sampled_at = time.monotonic()
        return present

    def start(self) -> None:
        self._peak = {}
        self._last = {}
        self._start = self._take()

    def sample(self) -> None:
        if time.monotonic() - self._sampled_at >= self.interval_s:
            self._take()

    async def sample_until_cancelled(self) -> None:
        """Sample on a clock of its own (run as a task), for spans the bench mostly waits in."""
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    def stop(self) -> RssReport:
        self._take()
        growth = [
            100 * (self._last[name] - start) / start
            for name, start in self._start.items()
            if name in self._last and start > 0
        ]
        return RssReport(
            start_mib={name: round(size, 1) for name, size in self._start.items()},
            peak_mib={name: round(size, 1) for name, size in self._peak.items()},
            end_mib={name: round(size, 1) for name, size in self._last.items()},
            growth_percent=round(max(growth, default=0.0), 1),
        )
