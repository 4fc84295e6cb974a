"""`jobstream bench --quick --json` end to end in a subprocess, on its own embedded servers:
the harness keeps working and reports every key. The figures themselves are not asserted
(they depend on the machine); only that each measured one is a positive number."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH_TIMEOUT_S = 170
THROUGHPUT_KEYS = (
    "tasks_per_s",
    "worker_tasks_per_s",
    "baseline_http_tasks_per_s",
    "baseline_skip_locked_tasks_per_s",
    "baseline_skip_locked_batch_tasks_per_s",
    "ceiling_publish_per_s",
    "ceiling_consume_per_s",
    "recovery_s",
    "recovery_restart_s",
    "lease_s",
    "replay_events_per_s",
    "chunked_tasks_per_s",
    "priority_start_ms",
    "one_big_job_submit_s",
    "one_big_job_tasks_per_s",
    "one_big_job_small_jobs_tasks_per_s",
    "one_big_job_ratio",
    "first_task_visible_s",
    "one_big_job_submit_rss_mib",
    "one_big_job_dispatcher_rss_mib",
    "one_big_job_projector_rss_mib",
    "crawl_pages_per_s",
    "crawl_target_pages_per_s",
)

API_ENDPOINTS = {
    "jobs",
    "jobs_later_page",
    "job",
    "tasks",
    "tasks_deep_page",
    "tasks_dead_lettered",
    "task",
    "stats",
    "stats_cached",
    "dead_letters",
    "workers",
    "metrics",
    "crawl",
}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _run_bench(cwd: Path) -> dict[str, Any]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("JOBSTREAM_")}
    result = subprocess.run(
        [sys.executable, "-m", "jobstream.cli", "bench", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT_S,
        cwd=cwd,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def _assert_positive(figures: dict[str, Any]) -> None:
    for key in THROUGHPUT_KEYS:
        value = figures[key]
        assert isinstance(value, int | float) and value > 0, (key, value)
    latency = figures["latency_ms"]
    for span in ("submit_to_started", "submit_to_done"):
        values = latency[span]
        assert set(values) == {"p50", "p95", "p99"}
        assert 0 < values["p50"] <= values["p95"] <= values["p99"], (span, values)


def test_quick_bench_reports_every_figure(tmp_path: Path) -> None:
    summary = _run_bench(tmp_path)

    _assert_positive(summary)
    assert len(summary["runs"]) == 1
    _assert_positive(summary["runs"][0])
    assert set(summary["ratios"]) == {
        "vs_baseline_http",
        "vs_baseline_skip_locked",
        "vs_baseline_skip_locked_batch",
        "chunked_vs_baseline_skip_locked_batch",
        "of_ceiling_publish",
        "of_ceiling_consume",
    }
    assert all(ratio > 0 for ratio in summary["ratios"].values())
    environment = summary["environment"]
    assert environment["cores"] >= 1 and environment["memory_gb"] > 0
    assert environment["nats_server"]["sync"] and environment["postgres"]["fsync"]
    assert summary["settings"]["quick"] is True
    detail = summary["runs"][0]["detail"]
    assert sum(detail["throughput"]["tasks_by_worker"].values()) == detail["throughput"]["tasks"]
    assert detail["recovery"]["tasks_held"] > 0
    worker_rss = detail["throughput"]["worker_rss"]
    assert len(worker_rss["start_mib"]) == summary["settings"]["workers"]
    assert isinstance(summary["worker_rss_growth_percent"], int | float)
    assert detail["replay"]["events"] >= summary["settings"]["replay_events"]
    big = detail["one_big_job"]
    assert big["tasks"] == big["small_jobs"]["tasks"] == summary["settings"]["tasks"]
    assert {"dispatcher", "projector", "bench"} <= set(big["rss"]["peak_mib"])
    assert detail["priority"]["job_tasks"] > 0
    crawl = detail["crawl"]
    assert crawl["pages"] > 0
    assert max(crawl["domain_max_in_flight"]) <= 2
    _assert_api(summary)
    assert not list(tmp_path.iterdir()), "the bench leaves nothing in the working directory"


def _assert_api(summary: dict[str, Any]) -> None:
    """The api section: every endpoint timed, on read models of the size asked for; a page
    view's requests counted when a browser is installed."""
    settings = summary["settings"]
    assert set(summary["api_ms"]) == API_ENDPOINTS
    for endpoint, values in summary["api_ms"].items():
        assert 0 < values["p50"] <= values["p99"], (endpoint, values)
    api = summary["runs"][0]["detail"]["api"]
    seeded = api["seed"]
    assert seeded["big_job_tasks"] == settings["api_tasks"]
    assert seeded["jobs"] == settings["api_small_jobs"] + 1
    assert seeded["tasks"] > seeded["results"] > seeded["dead_letters"] > 0
    for endpoint, timing in api["endpoints"].items():
        assert 3 <= timing["requests"] <= settings["api_requests"], endpoint
        assert timing["response_bytes"] > 0, endpoint
    if CHROMIUM is None:
        assert summary["dashboard_requests"] is None
        return
    assert set(summary["dashboard_requests"]) == {"overview", "job"}
    views = api["page_views"]
    assert "/jobs?limit=10" in views["overview"]["api_paths"]
    assert f"/jobs/{seeded['big_job_id']}" in views["job"]["api_paths"]
    for view in views.values():
        assert view["api_requests"] == len(view["api_paths"]) > 0
        assert view["static_requests"] > 0
