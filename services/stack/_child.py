"""Stopping child processes: a signal, a bounded wait, then SIGKILL."""

import subprocess
import time
from collections.abc import Sequence


def stop_process(process: subprocess.Popen[bytes] | None, *, signum: int, timeout_s: float) -> None:
    if process is not None:
        stop_processes([process], signum=signum, timeout_s=timeout_s)


def stop_processes(
    processes: Sequence[subprocess.Popen[bytes]], *, signum: int, timeout_s: float
) -> list[subprocess.Popen[bytes]]:
    """Signal every running process at once, wait for all within one `timeout_s`, then
    SIGKILL the ones still running; return those (killed after the grace period)."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.send_signal(signum)
    deadline = time.monotonic() + timeout_s
    killed = []
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_process(process)
            killed.append(process)
    return killed


def kill_process(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()
