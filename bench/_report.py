"""The bench's output: medians over the runs, ratios, the JSON document and a readable table."""

import json
import statistics
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from jobstream.bench._options import CHUNK_SIZE, REPLAY_PROCESSES, BenchOptions

NOTES: dict[str, str] = {}
SCALAR_KEYS = (
    "tasks_per_s",
    "worker_tasks_per_s",
    "worker_rss_growth_percent",
    "chunked_tasks_per_s",
    "baseline_http_tasks_per_s",
    "baseline_skip_locked_tasks_per_s",
    "baseline_skip_locked_batch_tasks_per_s",
    "recovery_s",
    "recovery_restart_s",
    "lease_s",
    "replay_events_per_s",
    "replay_parallel_events_per_s",
    "ceiling_publish_per_s",
    "ceiling_consume_per_s",
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
SPANS = ("submit_to_started", "submit_to_done")
PERCENTILES = ("p50", "p95", "p99")
API_PERCENTILES = ("p50", "p99")
RATIOS = {
    "vs_baseline_http": "baseline_http_tasks_per_s",
    "vs_baseline_skip_locked": "baseline_skip_locked_tasks_per_s",
    "vs_baseline_skip_locked_batch": "baseline_skip_locked_batch_tasks_per_s",
    "of_ceiling_publish": "ceiling_publish_per_s",
    "of_ceiling_consume": "ceiling_consume_per_s",
}


def _median(values: Sequence[float | None]) -> float | None:
    """The median, to 2 decimals, or 3 significant digits below 1 (a figure of a few
    milliseconds in seconds must not round to 0)."""
    present = [value for value in values if value is not None]
    if not present:
        return None
    median = statistics.median(present)
    return round(median, 2) if abs(median) >= 1 else float(f"{median:.3g}")


def _latency_median(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]] | None:
    measured = [run["latency_ms"] for run in runs if run["latency_ms"] is not None]
    if not measured:
        return None
    return {
        span: {p: _median([latency[span][p] for latency in measured]) for p in PERCENTILES}
        for span in SPANS
    }


def _api_median(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]] | None:
    """Per endpoint, the median over the runs of its p50 and of its p99."""
    measured = [run["api_ms"] for run in runs if run["api_ms"] is not None]
    if not measured:
        return None
    return {
        endpoint: {p: _median([api[endpoint][p] for api in measured]) for p in API_PERCENTILES}
        for endpoint in measured[0]
    }


PARTITION_FIGURES = (
    "events_per_s",
    "projectors_us_per_event",
    "postgres_us_per_event",
    "nats_us_per_event",
)


def _partitions_median(
    runs: Sequence[dict[str, Any]],
) -> dict[str, dict[str, float | None]] | None:
    """Per partition count, the median over the runs of each figure."""
    measured = [run["partitions"] for run in runs if run.get("partitions")]
    if not measured:
        return None
    return {
        count: {key: _median([each[count][key] for each in measured]) for key in PARTITION_FIGURES}
        for count in measured[0]
    }


def _requests_median(runs: Sequence[dict[str, Any]]) -> dict[str, float | None] | None:
    measured = [run["dashboard_requests"] for run in runs if run["dashboard_requests"]]
    if not measured:
        return None
    return {page: _median([counts[page] for counts in measured]) for page in measured[0]}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 2) if numerator and denominator else None


def _ratios(figures: dict[str, Any]) -> dict[str, float | None]:
    ratios = {name: _ratio(figures["tasks_per_s"], figures[key]) for name, key in RATIOS.items()}
    ratios["chunked_vs_baseline_skip_locked_batch"] = _ratio(
        figures["chunked_tasks_per_s"], figures["baseline_skip_locked_batch_tasks_per_s"]
    )
    return ratios


def summarize(
    runs: Sequence[dict[str, Any]],
    *,
    options: BenchOptions,
    environment: dict[str, Any],
    wall_s: float,
) -> dict[str, Any]:
    """Medians of every headline figure over the runs, then ratios of the medians."""
    figures: dict[str, Any] = {key: _median([run[key] for run in runs]) for key in SCALAR_KEYS}
    figures["latency_ms"] = _latency_median(runs)
    figures["api_ms"] = _api_median(runs)
    figures["dashboard_requests"] = _requests_median(runs)
    figures["partitions"] = _partitions_median(runs)
    return {
        **figures,
        "ratios": _ratios(figures),
        "notes": NOTES,
        "settings": {
            "tasks": options.tasks,
            "jobs": options.jobs,
            "workers": options.workers,
            "concurrency": options.concurrency,
            "projectors": options.projectors,
            "baseline_concurrency": options.baseline_concurrency,
            "ceiling_messages": options.ceiling_messages,
            "replay_events": options.replay_events,
            "lease_s": options.lease_s,
            "latency_rate_per_s": options.latency_rate_per_s,
            "latency_duration_s": options.latency_duration_s,
            "recovery_task_s": options.recovery_task_s,
            "api_small_jobs": options.api_small_jobs,
            "api_tasks": options.api_tasks,
            "api_requests": options.api_requests,
            "sections": sorted(options.sections),
            "quick": options.quick,
            "runs": options.runs,
        },
        "environment": environment,
        "wall_s": round(wall_s, 1),
        "runs": list(runs),
    }


def to_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, default=str)


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}{unit}" if abs(value) >= 100 else f"{value:,.2f}{unit}"


def _throughput_rows(table: Table, summary: dict[str, Any]) -> None:
    per_run = summary["runs"]
    rows = (
        ("jobstream end to end (tasks/s)", "tasks_per_s", None),
        ("  workers' own pace (tasks/s)", "worker_tasks_per_s", None),
        (
            f"  chunked mode, {CHUNK_SIZE}/message (tasks/s)",
            "chunked_tasks_per_s",
            "chunked_vs_baseline_skip_locked_batch",
        ),
        ("baseline: HTTP control plane", "baseline_http_tasks_per_s", "vs_baseline_http"),
        (
            "baseline: SKIP LOCKED, 1/txn",
            "baseline_skip_locked_tasks_per_s",
            "vs_baseline_skip_locked",
        ),
        (
            "baseline: SKIP LOCKED, 100/txn",
            "baseline_skip_locked_batch_tasks_per_s",
            "vs_baseline_skip_locked_batch",
        ),
        ("ceiling: JetStream publish (msgs/s)", "ceiling_publish_per_s", "of_ceiling_publish"),
        ("ceiling: JetStream pull+ack (msgs/s)", "ceiling_consume_per_s", "of_ceiling_consume"),
        ("replay, 1 process (events/s)", "replay_events_per_s", None),
        (
            f"replay, {REPLAY_PROCESSES} processes (events/s)",
            "replay_parallel_events_per_s",
            None,
        ),
        ("recovery: restart after kill (s)", "recovery_restart_s", None),
        ("recovery: finished after kill (s)", "recovery_s", None),
        ("worker RSS growth over throughput (%)", "worker_rss_growth_percent", None),
        ("priority: high job submit → started (ms)", "priority_start_ms", None),
        ("one big job: submit (s)", "one_big_job_submit_s", None),
        ("one big job: end to end (tasks/s)", "one_big_job_tasks_per_s", None),
        ("  the same as small jobs (tasks/s)", "one_big_job_small_jobs_tasks_per_s", None),
        ("  one big ÷ small jobs", "one_big_job_ratio", None),
        ("one big job: submit → first task visible (s)", "first_task_visible_s", None),
        ("one big job: peak RSS of submit (MiB)", "one_big_job_submit_rss_mib", None),
        ("one big job: peak RSS of dispatcher (MiB)", "one_big_job_dispatcher_rss_mib", None),
        ("one big job: peak RSS of projector (MiB)", "one_big_job_projector_rss_mib", None),
        ("crawl: pages/s, the whole fleet", "crawl_pages_per_s", None),
        ("  the domains' rates summed (pages/s)", "crawl_target_pages_per_s", None),
    )
    for label, key, ratio in rows:
        runs = ", ".join(_fmt(run[key]) for run in per_run)
        ratio_text = _fmt(summary["ratios"][ratio], "x") if ratio else ""
        table.add_row(label, _fmt(summary[key]), ratio_text, runs)


def _latency_rows(table: Table, summary: dict[str, Any]) -> None:
    latency = summary["latency_ms"]
    if latency is None:
        return
    for span in SPANS:
        values = " / ".join(_fmt(latency[span][p]) for p in PERCENTILES)
        table.add_row(f"latency {span.replace('_', ' ')} p50/p95/p99 (ms)", values, "", "")


API_LABELS = {
    "jobs": "/jobs",
    "jobs_later_page": "/jobs, a later page",
    "job": "/jobs/{big}",
    "tasks": "/jobs/{big}/tasks",
    "tasks_deep_page": "/jobs/{big}/tasks, a page in the middle",
    "tasks_dead_lettered": "/jobs/{big}/tasks?state=dead_lettered",
    "task": "/tasks/{id}",
    "stats": "/stats, computed",
    "stats_cached": "/stats, cached",
    "dead_letters": "/dead-letters",
    "workers": "/workers",
    "metrics": "/metrics",
    "crawl": "/jobs/{big}/crawl",
}
# An endpoint this slow (p50, ms) gets a row in the CPU table: which process limits it.
API_CPU_ROW_MS = 20.0


def _api_rows(table: Table, summary: dict[str, Any]) -> None:
    api = summary["api_ms"]
    if api is not None:
        table.add_row(
            f"API, read models with one job of {summary['settings']['api_tasks']:,} tasks"
        )
        for endpoint, values in api.items():
            per_run = ", ".join(
                _fmt(run["api_ms"][endpoint]["p50"]) for run in summary["runs"] if run["api_ms"]
            )
            table.add_row(
                f"  {API_LABELS.get(endpoint, endpoint)} p50/p99 (ms)",
                " / ".join(_fmt(values[p]) for p in API_PERCENTILES),
                "",
                per_run,
            )
    for page, count in (summary["dashboard_requests"] or {}).items():
        table.add_row(f"dashboard {page} page: API requests on load", f"{count:.0f}", "", "")


def _partition_rows(table: Table, summary: dict[str, Any]) -> None:
    partitions = summary["partitions"]
    if partitions is None:
        return
    one = partitions.get("1", {})
    for count, figures in partitions.items():
        cost = " / ".join(
            _fmt(figures[key])
            for key in ("projectors_us_per_event", "postgres_us_per_event", "nats_us_per_event")
        )
        table.add_row(
            f"projection, {count} partition(s): events/s; CPU µs/event projectors/PG/NATS",
            f"{_fmt(figures['events_per_s'])}; {cost}",
            _fmt(_ratio(figures["events_per_s"], one.get("events_per_s")), "x"),
            "",
        )


def _cpu_text(cpu: dict[str, Any]) -> str:
    ordered = sorted(cpu["per_process"].items(), key=lambda item: -item[1])
    parts = [f"{name} {percent:.0f}" for name, percent in ordered if percent >= 1]
    return ", ".join([*parts, f"(others {cpu['others_percent']:.0f})"])


def _cpu_table(summary: dict[str, Any]) -> Table | None:
    """Where the CPU went in the last run, per measured section: the busiest process first."""
    detail = summary["runs"][-1]["detail"]
    sections = {
        "ceiling publish": detail.get("ceiling", {}).get("publish_cpu"),
        "ceiling pull+ack": detail.get("ceiling", {}).get("consume_cpu"),
        "jobstream throughput": detail.get("throughput", {}).get("cpu"),
        "jobstream latency": detail.get("latency", {}).get("cpu"),
        "jobstream priority": detail.get("priority", {}).get("cpu"),
        "one big job": detail.get("one_big_job", {}).get("cpu"),
        "one big job, small jobs": detail.get("one_big_job", {}).get("small_jobs", {}).get("cpu"),
        "crawl": detail.get("crawl", {}).get("cpu"),
        "replay": detail.get("replay", {}).get("cpu"),
        "replay, parallel": detail.get("replay_parallel", {}).get("cpu"),
    }
    for design, result in detail.get("baselines", {}).items():
        sections[f"baseline {design}"] = result["cpu"]
    for endpoint, timing in detail.get("api", {}).get("endpoints", {}).items():
        if timing["p50_ms"] >= API_CPU_ROW_MS:
            sections[f"API {API_LABELS.get(endpoint, endpoint)}"] = timing["cpu"]
    rows = [(name, cpu) for name, cpu in sections.items() if cpu is not None]
    if not rows:
        return None
    table = Table(title="CPU, % of one core, last run (the busiest process is the limit)")
    table.add_column("section")
    table.add_column("processes")
    for name, cpu in rows:
        table.add_row(name, _cpu_text(cpu))
    return table


def render(summary: dict[str, Any], console: Console) -> None:
    settings, environment = summary["settings"], summary["environment"]
    table = Table(
        title=(
            f"jobstream bench — {settings['tasks']:,} tasks, {settings['workers']} workers x "
            f"{settings['concurrency']}, median of {len(summary['runs'])} run(s)"
        ),
        caption=(
            f"{environment['cores']} cores, {environment['memory_gb']} GB, NATS sync "
            f"{environment['nats_server']['sync']}, PostgreSQL fsync "
            f"{environment['postgres']['fsync']}; wall {summary['wall_s']} s"
        ),
    )
    table.add_column("figure")
    table.add_column("median", justify="right")
    table.add_column("jobstream ÷", justify="right")
    table.add_column("runs", justify="right")
    _throughput_rows(table, summary)
    _latency_rows(table, summary)
    _partition_rows(table, summary)
    _api_rows(table, summary)
    console.print(table)
    cpu_table = _cpu_table(summary)
    if cpu_table is not None:
        console.print(cpu_table)
    for key, note in summary["notes"].items():
        console.print(f"[dim]{key}: {note}[/dim]")
