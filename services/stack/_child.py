"""Stopping a server child process: a signal, a bounded wait, then SIGKILL."""

import subprocess


def stop_process(process: subprocess.Popen[bytes] | None, *, signum: int, timeout_s: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        kill_process(process)


def kill_process(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()
