"""What one `jobstream bench` invocation measures, and how hard: the flags, checked once."""

from dataclasses import dataclass, replace

from jobstream.events import JobstreamError

# Tasks per message in the chunked section: the batch of the batched SKIP LOCKED baseline.
CHUNK_SIZE = 100
SECTIONS = (
    "throughput",
    "chunked",
    "latency",
    "priority",
    "one_big_job",
    "crawl",
    "recovery",
    "replay",
    "partitions",
    "ceiling",
    "baselines",
    "api",
)
# The sections that need the jobstream processes (dispatcher, projector, workers).
PRODUCT_SECTIONS = frozenset(
    {"throughput", "chunked", "latency", "priority", "one_big_job", "crawl", "recovery"}
)

DEFAULT_TASKS = 20_000
QUICK_TASKS = 1_000
DEFAULT_WORKERS = 2
DEFAULT_CONCURRENCY = 64
# Loops per baseline worker process: past ~8 per process the 2-core machine's Postgres (and
# the control plane) only queue more, so more is not fairer.
DEFAULT_BASELINE_CONCURRENCY = 8
CEILING_MESSAGES = 50_000
QUICK_CEILING_MESSAGES = 10_000
REPLAY_EVENTS = 100_000
# The processes of the parallel replay (one per partition of the layout it builds).
REPLAY_PROCESSES = 2
QUICK_REPLAY_EVENTS = 5_000
DEFAULT_LEASE_S = 5.0
QUICK_LEASE_S = 2.0
DEFAULT_TASKS_PER_JOB = 2_000
LATENCY_RATE_PER_S = 200.0
LATENCY_DURATION_S = 5.0
QUICK_LATENCY_DURATION_S = 1.0
RECOVERY_TASK_S = 1.0
# Crawl: this many local domains, each at this rate, for about this long.
CRAWL_DOMAINS = 4
CRAWL_RATE_PER_S = 10.0
CRAWL_DURATION_S = 10.0
QUICK_CRAWL_DURATION_S = 3.0
# The API under load: read models of this many small jobs and one job of this many tasks,
# each endpoint asked up to API_REQUESTS times (fewer past API_BUDGET_S of requests, never
# fewer than API_MIN_REQUESTS) after API_WARMUP requests; a page view counted for
# PAGE_WINDOW_S.
API_SMALL_JOBS = 10_000
QUICK_API_SMALL_JOBS = 1_000
API_TASKS = 1_000_000
QUICK_API_TASKS = 20_000
API_REQUESTS = 50
QUICK_API_REQUESTS = 5
API_MIN_REQUESTS = 5
QUICK_API_MIN_REQUESTS = 3
API_BUDGET_S = 15.0
QUICK_API_BUDGET_S = 1.0
API_WARMUP = 3
QUICK_API_WARMUP = 1
PAGE_WINDOW_S = 3.0
QUICK_PAGE_WINDOW_S = 1.5
BENCH_QUEUE = "bench"


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    tasks: int = DEFAULT_TASKS
    tasks_per_job: int = DEFAULT_TASKS_PER_JOB
    workers: int = DEFAULT_WORKERS
    concurrency: int = DEFAULT_CONCURRENCY
    projectors: int = 1
    baseline_concurrency: int = DEFAULT_BASELINE_CONCURRENCY
    ceiling_messages: int = CEILING_MESSAGES
    replay_events: int = REPLAY_EVENTS
    runs: int = 1
    sections: frozenset[str] = frozenset(SECTIONS)
    quick: bool = False
    lease_s: float = DEFAULT_LEASE_S
    latency_rate_per_s: float = LATENCY_RATE_PER_S
    latency_duration_s: float = LATENCY_DURATION_S
    recovery_task_s: float = RECOVERY_TASK_S
    crawl_domains: int = CRAWL_DOMAINS
    crawl_rate_per_s: float = CRAWL_RATE_PER_S
    crawl_duration_s: float = CRAWL_DURATION_S
    api_small_jobs: int = API_SMALL_JOBS
    api_tasks: int = API_TASKS
    api_requests: int = API_REQUESTS
    api_min_requests: int = API_MIN_REQUESTS
    api_budget_s: float = API_BUDGET_S
    api_warmup: int = API_WARMUP
    page_window_s: float = PAGE_WINDOW_S
    nats_url: str | None = None
    database_url: str | None = None
    nats_sync_always: bool = False
    queue: str = BENCH_QUEUE

    @property
    def embedded(self) -> bool:
        return self.nats_url is None and self.database_url is None

    @property
    def jobs(self) -> int:
        return max(1, -(-self.tasks // self.tasks_per_job))

    def wants(self, section: str) -> bool:
        return section in self.sections

    def wants_product(self) -> bool:
        return bool(self.sections & PRODUCT_SECTIONS)


def parse_sections(only: str | None) -> frozenset[str]:
    """`--only throughput,latency` → the set of sections; every section when not given."""
    if only is None or not only.strip():
        return frozenset(SECTIONS)
    chosen = {part.strip() for part in only.split(",") if part.strip()}
    unknown = sorted(chosen - set(SECTIONS))
    if unknown:
        raise JobstreamError(
            f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}"
        )
    return frozenset(chosen)


def build_options(
    *,
    quick: bool,
    tasks: int | None,
    workers: int,
    concurrency: int,
    baseline_concurrency: int,
    runs: int,
    only: str | None,
    lease_s: float | None,
    nats_url: str | None,
    database_url: str | None,
    nats_sync_always: bool,
    api_tasks: int | None = None,
    projectors: int = 1,
) -> BenchOptions:
    """The options of one invocation: `--quick` scales the defaults down, flags win."""
    if (nats_url is None) != (database_url is None):
        raise JobstreamError("give both --nats-url and --database-url, or neither (embedded)")
    if nats_sync_always and nats_url is not None:
        raise JobstreamError("--nats-sync-always applies to the embedded nats-server only")
    options = BenchOptions(
        workers=workers,
        concurrency=concurrency,
        projectors=projectors,
        baseline_concurrency=baseline_concurrency,
        runs=runs,
        sections=parse_sections(only),
        quick=quick,
        nats_url=nats_url,
        database_url=database_url,
        nats_sync_always=nats_sync_always,
    )
    if quick:
        options = replace(
            options,
            tasks=QUICK_TASKS,
            tasks_per_job=QUICK_TASKS // 4,
            ceiling_messages=QUICK_CEILING_MESSAGES,
            replay_events=QUICK_REPLAY_EVENTS,
            lease_s=QUICK_LEASE_S,
            latency_duration_s=QUICK_LATENCY_DURATION_S,
            crawl_duration_s=QUICK_CRAWL_DURATION_S,
            api_small_jobs=QUICK_API_SMALL_JOBS,
            api_tasks=QUICK_API_TASKS,
            api_requests=QUICK_API_REQUESTS,
            api_min_requests=QUICK_API_MIN_REQUESTS,
            api_budget_s=QUICK_API_BUDGET_S,
            api_warmup=QUICK_API_WARMUP,
            page_window_s=QUICK_PAGE_WINDOW_S,
        )
    if api_tasks is not None:
        options = replace(options, api_tasks=api_tasks)
    if tasks is not None:
        options = replace(options, tasks=tasks)
    options = replace(options, ceiling_messages=max(options.ceiling_messages, options.tasks))
    if lease_s is not None:
        options = replace(options, lease_s=lease_s)
    return options
