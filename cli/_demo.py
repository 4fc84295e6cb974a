"""`jobstream demo`: sample jobs through the whole stack, and a summary that cross-checks the
API, the read model and the NDJSON files."""

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec

from jobstream.cli._submit import build_job, submit
from jobstream.events import Bus, JobstreamError, JobSubmitted, TaskSpec

TERMINAL_JOB_STATES = ("completed", "failed", "cancelled")


def sample_jobs(rng: random.Random) -> list[JobSubmitted]:
    sums = [
        TaskSpec(kind="sum", args={"a": rng.randint(0, 999), "b": rng.randint(0, 999)})
        for _ in range(200)
    ]
    return [
        build_job(sums, name="sums", queue="default", max_attempts=3, timeout_s=None),
        build_job(
            [TaskSpec(kind="sleep", args={"seconds": 0.5}, count=12)],
            name="sleeps",
            queue="default",
            max_attempts=3,
            timeout_s=10.0,
        ),
        build_job(
            [
                TaskSpec(kind="fail", args={"message": "flaky", "succeed_on_attempt": 2}, count=5),
                TaskSpec(kind="fail", args={"message": "always broken"}, count=3),
                TaskSpec(kind="noop", count=10),
            ],
            name="retries",
            queue="default",
            max_attempts=3,
            timeout_s=None,
        ),
    ]


@dataclass
class DemoReport:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    tasks_submitted: int = 0
    tasks_succeeded: int = 0
    tasks_failed_final: int = 0
    results_rows: int = 0
    ndjson_lines: int = 0
    api_url: str = ""
    elapsed_s: float = 0.0
    consistent: bool = False
    mismatches: list[str] = field(default_factory=list)


async def run_demo(
    bus: Bus, pool: asyncpg.Pool, *, api_url: str, results_dir: Path, timeout_s: float
) -> DemoReport:
    started = time.monotonic()
    jobs = sample_jobs(random.Random())
    for job in jobs:
        await submit(bus, job)
    ids = [job.job_id for job in jobs]
    await _wait_for_jobs(pool, ids, timeout_s)
    report = DemoReport(api_url=api_url, tasks_submitted=sum(job.task_count for job in jobs))
    await _fill_report(report, pool, ids, api_url, results_dir)
    report.elapsed_s = round(time.monotonic() - started, 2)
    return report


async def _wait_for_jobs(pool: asyncpg.Pool, job_ids: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        finished = await pool.fetchval(
            "SELECT count(*) FROM jobs WHERE job_id = ANY($1) AND status = ANY($2)",
            job_ids,
            list(TERMINAL_JOB_STATES),
        )
        if finished == len(job_ids):
            return
        await asyncio.sleep(0.25)
    raise JobstreamError(f"demo jobs did not finish within {timeout_s:.0f}s")


async def _fill_report(
    report: DemoReport, pool: asyncpg.Pool, ids: list[str], api_url: str, results_dir: Path
) -> None:
    results = await pool.fetch(
        "SELECT status, count(*) AS n FROM results WHERE job_id = ANY($1) GROUP BY status", ids
    )
    by_status = {row["status"]: row["n"] for row in results}
    report.results_rows = sum(by_status.values())
    report.ndjson_lines = await asyncio.to_thread(_count_ndjson_lines, results_dir, set(ids))
    async with httpx.AsyncClient(base_url=api_url, timeout=10) as client:
        for job_id in ids:
            response = await client.get(f"/jobs/{job_id}")
            response.raise_for_status()
            job = response.json()
            report.jobs.append(
                {
                    "job_id": job_id,
                    "name": job["name"],
                    "status": job["status"],
                    "tasks": job["tasks"],
                }
            )
    report.tasks_succeeded = sum(job["tasks"]["succeeded"] for job in report.jobs)
    report.tasks_failed_final = sum(job["tasks"]["dead_lettered"] for job in report.jobs)
    finished = report.tasks_succeeded + report.tasks_failed_final
    checks = {
        "rows in the results table": report.results_rows,
        "NDJSON lines": report.ndjson_lines,
    }
    report.mismatches = [
        f"{what}: {value} != {finished} finished tasks in the API"
        for what, value in checks.items()
        if value != finished
    ]
    if finished != report.tasks_submitted:
        report.mismatches.append(f"{finished} tasks finished of {report.tasks_submitted} submitted")
    report.consistent = not report.mismatches


class _Line(msgspec.Struct):
    job_id: str


def _count_ndjson_lines(results_dir: Path, job_ids: set[str]) -> int:
    decoder = msgspec.json.Decoder(_Line)
    count = 0
    for path in sorted(results_dir.glob("results-*.ndjson")):
        with path.open("rb") as lines:
            for line in lines:
                if line.strip() and decoder.decode(line).job_id in job_ids:
                    count += 1
    return count


def report_json(report: DemoReport) -> str:
    return json.dumps(
        {
            "tasks_submitted": report.tasks_submitted,
            "tasks_succeeded": report.tasks_succeeded,
            "tasks_failed_final": report.tasks_failed_final,
            "results_rows": report.results_rows,
            "ndjson_lines": report.ndjson_lines,
            "api_url": report.api_url,
            "elapsed_s": report.elapsed_s,
            "consistent": report.consistent,
            "mismatches": report.mismatches,
            "jobs": report.jobs,
        },
        indent=2,
    )
