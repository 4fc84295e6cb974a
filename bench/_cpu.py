"""CPU time per process over a measured span: which process is the limit."""

import time
from collections.abc import Mapping
from dataclasses import dataclass

import psutil


def _tree_cpu_s(pid: int, *, with_children: bool) -> float:
    """User + system CPU seconds of `pid`; with its children for a server (PostgreSQL's
    backends): the live ones, and through the root's counters those already gone."""
    try:
        root = psutil.Process(pid)
        root_times = root.cpu_times()
        children = root.children(recursive=True) if with_children else []
    except psutil.Error:
        return 0.0
    total = root_times.user + root_times.system
    if with_children:
        total += root_times.children_user + root_times.children_system
    for child in children:
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores, since boot."""
    times = psutil.cpu_times()
    total = sum(times)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


@dataclass(frozen=True, kw_only=True)
class CpuReport:
    """Percent of one core per process (100 = one core busy) and the machine's busy share."""

    per_process: dict[str, float]
    machine_busy_percent: float
    # CPU the machine spent outside the measured processes (percent of one core): other
    # work on a shared machine, which the figures of the span compete with.
    others_percent: float


class CpuMeter:
    """Snapshots of CPU seconds per named process (trees for the servers) around a span.

    A process that exits inside the span reports its own total (`exited`): psutil cannot see
    the dead.
    """

    def __init__(self, pids: Mapping[str, int], *, trees: frozenset[str] = frozenset()) -> None:
        self.pids = dict(pids)
        self.trees = trees
        self._start: dict[str, float] = {}
        self._machine_start = (0.0, 0.0)
        self._started_at = 0.0

    def _sample(self) -> dict[str, float]:
        return {
            name: _tree_cpu_s(pid, with_children=name in self.trees)
            for name, pid in self.pids.items()
        }

    def start(self) -> None:
        self._start = self._sample()
        self._machine_start = _machine_busy_s()
        self._started_at = time.monotonic()

    def stop(self, *, exited: Mapping[str, float] | None = None) -> CpuReport:
        """`exited`: the total CPU seconds that processes gone by now reported themselves."""
        elapsed = max(1e-9, time.monotonic() - self._started_at)
        end = self._sample() | dict(exited or {})
        busy, total = _machine_busy_s()
        busy_delta = busy - self._machine_start[0]
        total_delta = max(1e-9, total - self._machine_start[1])
        used = {name: max(0.0, end[name] - self._start.get(name, 0.0)) for name in end}
        return CpuReport(
            per_process={name: round(100 * cpu_s / elapsed, 1) for name, cpu_s in used.items()},
            machine_busy_percent=round(100 * busy_delta / total_delta, 1),
            others_percent=round(100 * max(0.0, busy_delta - sum(used.values())) / elapsed, 1),
        )
