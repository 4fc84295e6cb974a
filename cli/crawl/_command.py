"""`jobstream crawl`: the command line's words checked into a crawl, run, and reported."""

import json
import sys
import time
from typing import TYPE_CHECKING, Annotated

import typer

from jobstream.cli._nats_security import nats_security_options
from jobstream.cli._runtime import EXIT_FAILURE, connect_bus, run, usage_error
from jobstream.cli._settings import (
    DEFAULT_DATA_DIR,
    STDIN,
    DataDirOption,
    NatsUrlOption,
    QueueOption,
    resolve_endpoints,
)
from jobstream.cli.crawl._request import (
    MAX_PASSES,
    PASS_KEY_SUFFIX,
    CrawlRequest,
    build_request,
    warm_settings,
)
from jobstream.cli.crawl._tasks import DEFAULT_CONCURRENCY, DEFAULT_RATE, DEFAULT_TIMEOUT_S
from jobstream.cli.crawl._urls import check_urls_file
from jobstream.events import NO_SECURITY, JobstreamError, NatsSecurity

if TYPE_CHECKING:
    from jobstream.cli.crawl._discover import DiscoveryReport
    from jobstream.cli.crawl._run import CrawlHooks, PassOutcome
    from jobstream.cli.crawl._watch import PassSummary

# A line of live progress at most this often when stderr is not a terminal.
PLAIN_PROGRESS_EVERY_S = 10.0

CRAWL_HELP = (
    "Warm a site's cache: find its pages and submit a job of one `http.warm` task per page.\n\n"
    "Pages come from the site (its robots.txt `Sitemap:` lines, else /sitemap.xml, else"
    " /sitemap_index.xml; indexes followed, gzip read, Disallow and Crawl-delay honoured for"
    " --user-agent), from --sitemap, or from --urls-file (one URL a line, taken as given)."
    " Only the site's own http(s) pages are kept, each once. The job is an ordinary job:"
    " `status`, `cancel` and `dlq` work on it; its labels are crawl=<host or 'urls'> and"
    " pass=<n>.\n\n"
    "Exit codes: 0 submitted (with --wait: every page answered); 1 with --wait, pages failed or"
    " the job did not complete; 2 unusable input (a malformed URL, a sitemap that answers 404 or"
    " is not XML, no URL found); 3 a host not reached (the site, NATS). A failure while the"
    " pages are being sent rejects the half-sent job: none of it runs."
)


@nats_security_options
def crawl(
    site: Annotated[
        str | None, typer.Argument(help="The site to discover, e.g. https://example.com.")
    ] = None,
    sitemap: Annotated[
        str | None, typer.Option(help="Crawl this sitemap (or sitemap index) instead.")
    ] = None,
    urls_file: Annotated[
        str | None, typer.Option(help="Crawl the URLs of this file, one a line; - reads stdin.")
    ] = None,
    max_urls: Annotated[
        int | None,
        typer.Option(
            envvar="JOBSTREAM_CRAWL_MAX_URLS",
            show_envvar=True,
            min=1,
            max=100_000_000,
            help="Stop discovering at this many pages.",
        ),
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(help="Keep only paths matching this glob, e.g. '/blog/*' (repeatable)."),
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Leave out paths matching this glob (repeatable).")
    ] = None,
    passes: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_PASSES,
            help="Crawl the same pages this many times, each pass after the one before has"
            " ended, with each pass's cache hit ratio (implies --wait).",
        ),
    ] = 1,
    concurrency: Annotated[
        int,
        typer.Option(
            envvar="JOBSTREAM_CRAWL_CONCURRENCY",
            show_envvar=True,
            min=1,
            max=1000,
            help="Requests in flight per domain, across every worker.",
        ),
    ] = DEFAULT_CONCURRENCY,
    rate: Annotated[
        float,
        typer.Option(
            envvar="JOBSTREAM_CRAWL_RATE",
            show_envvar=True,
            min=0.001,
            max=10_000,
            help="Requests per second per domain, across every worker.",
        ),
    ] = DEFAULT_RATE,
    header: Annotated[
        list[str] | None,
        typer.Option(help="'Name: value' sent with every request (repeatable)."),
    ] = None,
    timeout_s: Annotated[
        float,
        typer.Option(
            "--timeout",
            envvar="JOBSTREAM_CRAWL_TIMEOUT_S",
            show_envvar=True,
            min=0.1,
            max=600,
            help="Seconds a request may take (discovery's too).",
        ),
    ] = DEFAULT_TIMEOUT_S,
    user_agent: Annotated[
        str | None,
        typer.Option(
            envvar="JOBSTREAM_CRAWL_USER_AGENT",
            show_envvar=True,
            help="User-Agent of every request, and the agent robots.txt is read for."
            " Default: jobstream-warm/<version> (+https://github.com/jobstream).",
        ),
    ] = None,
    queue: QueueOption = "default",
    priority: Annotated[
        int,
        typer.Option(
            envvar="JOBSTREAM_PRIORITY",
            show_envvar=True,
            min=-(2**31),
            max=2**31 - 1,
            help="Above 0: high level, 0: normal, below 0: low.",
        ),
    ] = 0,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            help="Submit once: a crawl run again with this key goes on with the job it"
            f" started (pass n > 1 uses '<key>{PASS_KEY_SUFFIX.format(n='<n>')}')."
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Show live progress until the job ends; exit 1 if pages failed."
        ),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help='Print {"crawl": ..., "passes": [{"job_id": ..., ...}]}.'),
    ] = False,
    nats_url: NatsUrlOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    nats_security: NatsSecurity = NO_SECURITY,
) -> None:
    try:
        request = build_request(
            site=site,
            sitemap=sitemap,
            urls_file=urls_file,
            max_urls=max_urls,
            include=include or [],
            exclude=exclude or [],
            passes=passes,
            wait=wait or passes > 1,
            warm=warm_settings(concurrency, rate, header or [], timeout_s, user_agent),
            queue=queue,
            priority=priority,
            idempotency_key=idempotency_key,
        )
        if request.source == "urls" and request.target != STDIN:
            check_urls_file(request.target)
        endpoints = resolve_endpoints(nats_url, None, data_dir, need_database=False)
    except JobstreamError as exc:
        usage_error(str(exc))
    report = _Reporter(request, as_json=as_json)

    async def main() -> list["PassOutcome"]:
        from jobstream.cli.crawl._run import run_crawl

        bus = await connect_bus(endpoints.nats_urls, name="jobstream-crawl", security=nats_security)
        try:
            return await run_crawl(bus, request, report.hooks())
        finally:
            await bus.close()

    outcomes = run(main())
    report.done(outcomes)
    if request.wait and not all(o.summary is not None and o.summary.ok for o in outcomes):
        raise typer.Exit(EXIT_FAILURE)


class _Reporter:
    """What the user sees: notes and live progress on stderr, results on stdout."""

    def __init__(self, request: CrawlRequest, *, as_json: bool) -> None:
        self.request = request
        self.as_json = as_json
        self.tty = sys.stderr.isatty()
        self._last_plain = 0.0
        self._pages: int | None = None

    def hooks(self) -> "CrawlHooks":
        from jobstream.cli.crawl._run import CrawlHooks

        return CrawlHooks(
            note=self.note,
            submitted=self.submitted,
            progress=self.progress,
            ended=self.ended,
            show_submit_progress=self.tty,
        )

    def note(self, text: str) -> None:
        typer.echo(text, err=True)

    def submitted(self, outcome: "PassOutcome", found: "DiscoveryReport | None") -> None:
        from jobstream.cli._submit import no_worker_warning

        if found is not None:
            delay = found.crawl_delay_s
            shown = f"; robots.txt Crawl-delay {delay:g}s" if delay is not None else ""
            self.note(found.line() + shown)
        submitted = outcome.submitted
        if submitted.duplicate:
            self.note(
                f"note: a job with this idempotency key was already submitted: {submitted.job_id}"
            )
        if submitted.no_worker:
            self.note(no_worker_warning(self.request.queue))
        self._pages = submitted.tasks
        if self.request.wait:
            pages = f" ({submitted.tasks} pages)" if submitted.tasks is not None else ""
            self.note(f"pass {outcome.pass_number}: job {submitted.job_id}{pages}")
        elif not self.as_json:
            typer.echo(submitted.job_id)

    def progress(self, summary: "PassSummary") -> None:
        now = time.monotonic()
        if not self.tty and now - self._last_plain < PLAIN_PROGRESS_EVERY_S:
            return
        self._last_plain = now
        of = f" of {self._pages}" if self._pages is not None else ""
        line = (
            f"pass {summary.pass_number}: {summary.pages}{of} pages done, {summary.failed}"
            f" failed, {summary.cache_hits} cache hits"
        )
        if self.tty:
            sys.stderr.write(f"\r\x1b[2K{line}")
            sys.stderr.flush()
        else:
            self.note(line)

    def ended(self, outcome: "PassOutcome") -> None:
        """A pass's summary as soon as it ends (the next pass may take long)."""
        if self.tty:
            sys.stderr.write("\r\x1b[2K")
        if outcome.summary is not None and not self.as_json:
            typer.echo(outcome.summary.line())

    def done(self, outcomes: list["PassOutcome"]) -> None:
        if self.as_json:
            shown = {"crawl": self.request.label, "passes": [o.as_dict() for o in outcomes]}
            typer.echo(json.dumps(shown))


__all__ = ["CRAWL_HELP", "crawl"]
