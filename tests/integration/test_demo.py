"""The README's first command, as a test: `jobstream demo` on the embedded stack."""

import json
import os
import subprocess
import sys
from pathlib import Path

from jobstream.services.stack import free_port


def test_demo_on_embedded_stack_agrees_everywhere(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSTREAM_")}
    result = subprocess.run(
        [sys.executable, "-m", "jobstream.cli", "demo", "--json", "--api-port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["consistent"], report["mismatches"]
    assert report["tasks_submitted"] == report["tasks_succeeded"] + report["tasks_failed_final"]
    assert report["tasks_failed_final"] == 3
    assert report["ndjson_lines"] == report["results_rows"] == report["tasks_submitted"]
    statuses = {job["name"]: job["status"] for job in report["jobs"]}
    assert statuses == {"sums": "completed", "sleeps": "completed", "retries": "failed"}
    assert not (tmp_path / ".jobstream" / "stack.json").exists(), "demo cleans up its stack file"
