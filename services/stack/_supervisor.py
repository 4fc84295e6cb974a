"""Keep N child processes running: restart one that dies, with a backoff that grows while it
keeps dying and starts over once it has stayed up a while; on stop, let each drain within a
grace period (SIGTERM), then SIGKILL what is left."""

import asyncio
import contextlib
import logging
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from jobstream.services.stack._child import stop_processes

log = logging.getLogger(__name__)

POLL_S = 0.2


@dataclass(frozen=True, kw_only=True)
class ChildSpec:
    name: str
    command: Sequence[str]
    environment: Mapping[str, str] | None = None


@dataclass(frozen=True, kw_only=True)
class RestartPolicy:
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    # A child up this long counts as healthy: its next crash restarts it after the base delay.
    stable_after_s: float = 60.0

    def delay_s(self, crashes_in_a_row: int) -> float:
        doublings = min(max(0, crashes_in_a_row - 1), 30)
        return min(self.backoff_cap_s, self.backoff_base_s * float(2**doublings))


@dataclass
class _Running:
    spec: ChildSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    crashes_in_a_row: int = 0
    restart_at: float | None = None
    # Ended with exit 0 on its own: not restarted.
    finished: bool = False


class Supervisor:
    """Runs `specs` until `stop` is set, then drains them; `run` returns 0 when every child
    ended cleanly (exit 0 within `grace_s`), else 1."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        grace_s: float,
        policy: RestartPolicy | None = None,
    ) -> None:
        self._children = [_Running(spec) for spec in specs]
        self.grace_s = grace_s
        self.policy = policy or RestartPolicy()

    async def run(self, stop: asyncio.Event) -> int:
        for child in self._children:
            self._start(child)
        try:
            while not stop.is_set() and not all(child.finished for child in self._children):
                self._tend(time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_S)
        finally:
            clean = await asyncio.to_thread(self._drain)
        return 0 if clean else 1

    def _start(self, child: _Running) -> None:
        environment = dict(child.spec.environment) if child.spec.environment else None
        # A session of its own: a terminal's Ctrl-C reaches the supervisor, which drains all.
        child.process = subprocess.Popen(
            list(child.spec.command), start_new_session=True, env=environment
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("started %s (pid %d)", child.spec.name, child.process.pid)

    def _tend(self, now: float) -> None:
        for child in self._children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._start(child)
                continue
            if child.finished or child.process is None:
                continue
            code = child.process.poll()
            if code is None:
                continue
            if code == 0:
                log.info("%s exited cleanly; not restarting it", child.spec.name)
                child.finished = True
                continue
            if now - child.started_at >= self.policy.stable_after_s:
                child.crashes_in_a_row = 0
            child.crashes_in_a_row += 1
            delay_s = self.policy.delay_s(child.crashes_in_a_row)
            log.warning("%s exited with %d; restarting in %.1fs", child.spec.name, code, delay_s)
            child.restart_at = now + delay_s

    def _drain(self) -> bool:
        processes = [child.process for child in self._children if child.process is not None]
        killed = stop_processes(processes, signum=signal.SIGTERM, timeout_s=self.grace_s)
        for process in killed:
            log.warning("pid %d did not drain in %.0fs; killed", process.pid, self.grace_s)
        return all(process.returncode == 0 for process in processes)
