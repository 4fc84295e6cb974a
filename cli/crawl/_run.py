"""A crawl run: discovery into pass 1's job, each later pass from the pass before's tasks as
the log holds them, each job followed to its end when asked."""

import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from jobstream.cli._submit import (
    DEFAULT_MAX_ATTEMPTS,
    SubmitOutcome,
    SubmitPlan,
    build_job,
    submit_planned,
)
from jobstream.cli.crawl._discover import Discovery, DiscoveryReport
from jobstream.cli.crawl._fetch import discovery_client
from jobstream.cli.crawl._request import CrawlRequest
from jobstream.cli.crawl._tasks import crawl_labels, next_pass
from jobstream.cli.crawl._urls import open_urls
from jobstream.cli.crawl._watch import PassSummary, job_tasks, watch_job
from jobstream.events import Bus, TaskSpec
from jobstream.services.worker import HandlerRegistry


@dataclass
class PassOutcome:
    pass_number: int
    submitted: SubmitOutcome
    summary: PassSummary | None = None

    def as_dict(self) -> dict[str, object]:
        shown: dict[str, object] = {
            "pass": self.pass_number,
            "job_id": self.submitted.job_id,
            "duplicate": self.submitted.duplicate,
            "tasks": self.submitted.tasks,
        }
        return shown | (self.summary.as_dict() if self.summary else {})


@dataclass
class CrawlHooks:
    """How the run tells the user what happens (the command prints; tests collect)."""

    note: Callable[[str], None]
    submitted: Callable[[PassOutcome, DiscoveryReport | None], None]
    progress: Callable[[PassSummary], None] = field(default=lambda summary: None)
    ended: Callable[[PassOutcome], None] = field(default=lambda outcome: None)
    show_submit_progress: bool = False


async def run_crawl(bus: Bus, request: CrawlRequest, hooks: CrawlHooks) -> list[PassOutcome]:
    outcomes: list[PassOutcome] = []
    warm = request.warm
    client = discovery_client(
        user_agent=warm.user_agent, timeout_s=warm.timeout_s, headers=warm.headers
    )
    async with client:
        discovery = Discovery(
            client,
            user_agent=warm.user_agent,
            paths=request.paths,
            max_urls=request.max_urls,
            note=hooks.note,
        )
        for pass_number in range(1, request.passes + 1):
            specs = (
                _pages(discovery, request)
                if pass_number == 1
                else next_pass(job_tasks(bus, outcomes[-1].submitted.job_id), pass_number)
            )
            async with contextlib.aclosing(specs):
                submitted = await submit_planned(
                    bus,
                    _plan(request, pass_number, specs),
                    show_progress=hooks.show_submit_progress,
                )
            outcome = PassOutcome(pass_number, submitted)
            found = discovery.report if pass_number == 1 and submitted.tasks else None
            hooks.submitted(outcome, found)
            if request.wait:
                summary = PassSummary(pass_number=pass_number, job_id=submitted.job_id)
                outcome.summary = await watch_job(bus, summary, on_change=hooks.progress)
                hooks.ended(outcome)
            outcomes.append(outcome)
    return outcomes


def _plan(
    request: CrawlRequest, pass_number: int, specs: AsyncGenerator[TaskSpec, None]
) -> SubmitPlan:
    settings = build_job(
        [],
        name=f"crawl {request.label}",
        queue=request.queue,
        max_attempts=DEFAULT_MAX_ATTEMPTS,
        timeout_s=None,
        priority=request.priority,
        labels=crawl_labels(request.label, pass_number),
        idempotency_key=request.key_for(pass_number),
        submitted_by="cli crawl",
    )
    return SubmitPlan(
        settings=settings,
        specs=None,
        tasks_file=None,
        summary=None,
        registry=HandlerRegistry(),
        kind_defaults=False,
        source=specs,
    )


async def _pages(discovery: Discovery, request: CrawlRequest) -> AsyncGenerator[TaskSpec, None]:
    async with contextlib.aclosing(_urls(discovery, request)) as urls:
        async for url in urls:
            yield request.warm.spec(url, 1, discovery.report.crawl_delay_s)


async def _urls(discovery: Discovery, request: CrawlRequest) -> AsyncGenerator[str, None]:
    if request.source == "urls":
        with open_urls(request.target) as lines:
            given = discovery.from_lines(lines, where=request.target)
            async with contextlib.aclosing(given) as urls:
                async for url in urls:
                    yield url
        return
    if request.source == "site":
        found = discovery.from_site(request.target)
    else:
        found = discovery.from_sitemap(request.target)
    async with contextlib.aclosing(found) as urls:
        async for url in urls:
            yield url
