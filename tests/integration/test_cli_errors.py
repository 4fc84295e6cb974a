"""Bad input at the command line: one clear line on stderr, a non-zero exit, no traceback,
and nothing published."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from events import Bus, JobSubmitted

JOBSTREAM = [sys.executable, "-m", "cli"]


def jobstream(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*JOBSTREAM, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--kind", "nope"], ["unknown task kind 'nope'", "sum"]),
        (["--kind", "sum", "--args", "{a: 1"], ["--args is not valid JSON"]),
        (["--kind", "sum", "--args", "[1, 2]"], ["--args must be a JSON object"]),
        (["--tasks-file", "missing.ndjson"], ["cannot read tasks file missing.ndjson"]),
        ([], ["give either --kind"]),
        (
            ["--kind", "sum", "--queue", "a.b"],
            ["queue 'a.b' has characters outside"],
        ),
    ],
)
def test_submit_rejects_bad_input(
    nats_url: str, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    result = jobstream("submit", "--nats-url", nats_url, *args, cwd=tmp_path)
    assert_clean_error(result, *fragments)


def test_submit_rejects_malformed_tasks_file_line(nats_url: str, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.ndjson"
    tasks.write_text('{"kind": "sum", "args": {"a": 1, "b": 2}}\n{"kind": 3}\n')
    result = jobstream("submit", "--nats-url", nats_url, "--tasks-file", str(tasks), cwd=tmp_path)
    assert_clean_error(result, f"{tasks}:2")


def test_unreachable_nats_names_the_url(tmp_path: Path) -> None:
    url = "nats://127.0.0.1:1"
    result = jobstream("submit", "--nats-url", url, "--kind", "noop", cwd=tmp_path)
    assert_clean_error(result, "cannot reach NATS at nats://127.0.0.1:1")


def test_unreachable_postgres_names_the_url(tmp_path: Path) -> None:
    url = "postgresql://postgres:secret@127.0.0.1:1/jobstream"
    result = jobstream("status", "01ABC", "--database-url", url, cwd=tmp_path)
    assert_clean_error(result, "cannot reach PostgreSQL at postgresql://postgres@127.0.0.1:1")
    assert "secret" not in result.stderr


def test_no_servers_configured_says_how_to_start_them(tmp_path: Path) -> None:
    result = jobstream("submit", "--kind", "noop", cwd=tmp_path)
    assert_clean_error(result, "no NATS server", "jobstream up")


async def test_submit_publishes_job_and_prints_json(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    tasks = tmp_path / "tasks.ndjson"
    tasks.write_text('{"kind": "sum", "args": {"a": 1, "b": 2}}\n{"kind": "noop"}\n')
    result = jobstream(
        "submit", "--nats-url", nats_url, "--tasks-file", str(tasks), "--json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    job_id = json.loads(result.stdout)["job_id"]
    last = await bus.last_on_subject(f"evt.job.{job_id}")
    assert last is not None
    submitted = last[1]
    assert isinstance(submitted, JobSubmitted)
    assert submitted.task_count == 2
    assert submitted.tasks[0].args == {"a": 1, "b": 2}
