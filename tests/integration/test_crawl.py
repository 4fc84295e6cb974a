"""`jobstream crawl` against local web sites and a real nats-server: pages found from robots.txt
and sitemaps become one ordinary streamed job of `http.warm` tasks; bad input gets a clear
message and leaves nothing half-submitted."""

import asyncio
import contextlib
import gzip
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from jobstream.events import (
    Bus,
    JobCompleted,
    JobRejected,
    JobSealed,
    JobSubmitted,
    JobTasksAdded,
    TaskSpec,
    job_subject,
)
from jobstream.projections import PostgresProjector
from jobstream.services.dispatcher import Dispatcher
from jobstream.services.worker import (
    HandlerRegistry,
    PermanentError,
    TaskContext,
    Worker,
    WorkerOptions,
)
from tests._sites import Answer, Site, sitemap_index, urlset
from tests.faults._harness import wait_until_projected
from tests.integration.test_worker_dispatcher import read_log, running

JOBSTREAM = [sys.executable, "-m", "jobstream.cli"]


class Crawled:
    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        self.code, self.stdout, self.stderr = result.returncode, result.stdout, result.stderr

    @property
    def output(self) -> dict[str, object]:
        assert self.code == 0, self.stderr
        shown: dict[str, object] = json.loads(self.stdout)
        return shown

    @property
    def job_id(self) -> str:
        passes = self.output["passes"]
        assert isinstance(passes, list)
        job_id: str = passes[0]["job_id"]
        return job_id


def crawl(nats_url: str, cwd: Path, *args: str, stdin: str | None = None) -> Crawled:
    result = subprocess.run(
        [*JOBSTREAM, "crawl", "--nats-url", nats_url, "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        input=stdin,
        check=False,
    )
    return Crawled(result)


async def crawl_async(nats_url: str, cwd: Path, *args: str, stdin: str | None = None) -> Crawled:
    return await asyncio.to_thread(crawl, nats_url, cwd, *args, stdin=stdin)


async def job_events(bus: Bus, job_id: str) -> list[object]:
    return [
        e
        for e in await read_log(bus)
        if isinstance(e, JobSubmitted | JobTasksAdded | JobSealed | JobRejected)
        and e.job_id == job_id
    ]


async def submitted_tasks(bus: Bus, job_id: str) -> tuple[JobSubmitted, list[TaskSpec]]:
    events = await job_events(bus, job_id)
    header = events[0]
    assert isinstance(header, JobSubmitted)
    specs = [
        spec for e in events if isinstance(e, JobSubmitted | JobTasksAdded) for spec in e.tasks
    ]
    assert header.sealed or isinstance(events[-1], JobSealed), events[-1]
    return header, specs


def urls_of(specs: list[TaskSpec]) -> list[str]:
    assert all(spec.kind == "http.warm" and spec.count == 1 for spec in specs)
    return [spec.args["url"] for spec in specs]


@pytest.fixture
def site() -> Iterator[Site]:
    with Site() as serving:
        yield serving


def big_site(site: Site, pages: int, children: int) -> list[str]:
    """A sitemap index at /sitemap_index.xml (named by robots.txt) of gzip children."""
    urls = [f"{site.url}/page/{index}" for index in range(pages)]
    per_child = pages // children
    names = []
    for child in range(children):
        part = urls[child * per_child : (child + 1) * per_child]
        body = gzip.compress(urlset(part))
        # Half named .gz; the other half gzip by content alone.
        name = f"/sitemaps/part-{child}.xml" + (".gz" if child % 2 else "")
        site.add(name, body, Content_Type="application/octet-stream")
        names.append(site.url + name)
    site.add("/sitemap_index.xml", sitemap_index(names), Content_Type="application/xml")
    site.add("/robots.txt", f"User-agent: *\nAllow: /\nSitemap: {site.url}/sitemap_index.xml\n")
    return urls


async def test_a_sitemap_index_of_gzip_children_becomes_one_job_of_5000_tasks(
    bus: Bus, nats_url: str, tmp_path: Path, site: Site
) -> None:
    urls = big_site(site, 5000, 10)
    crawled = await crawl_async(nats_url, tmp_path, site.url)
    assert crawled.output["crawl"] == site.host
    header, specs = await submitted_tasks(bus, crawled.job_id)
    assert not header.sealed, "5,000 pages travel as a streamed job"
    assert header.labels == {"crawl": site.host, "pass": "1"}
    assert sorted(urls_of(specs)) == sorted(urls)
    args = specs[0].args
    assert args["pass"] == 1 and args["crawl_delay_s"] is None
    assert (args["rate"], args["concurrency"], args["timeout_s"]) == (2.0, 2, 15.0)
    assert args["user_agent"].startswith("jobstream-warm/")
    assert "found 5000 URLs from 11 sitemap(s)" in crawled.stderr


async def test_max_urls_stops_discovery_there(
    bus: Bus, nats_url: str, tmp_path: Path, site: Site
) -> None:
    big_site(site, 5000, 10)
    crawled = await crawl_async(nats_url, tmp_path, site.url, "--max-urls", "1000")
    _, specs = await submitted_tasks(bus, crawled.job_id)
    assert len(urls_of(specs)) == 1000
    fetched = [path for path in site.requests if path.startswith("/sitemaps/")]
    assert len(fetched) == 2, f"the cap is reached in the second child: {fetched}"


async def test_robots_disallow_and_crawl_delay_are_honoured(
    bus: Bus, nats_url: str, tmp_path: Path, site: Site
) -> None:
    pages = ["/", "/about", "/private/a", "/private/open/b", "/tmp/x", "/shop/cart"]
    site.add("/sitemap.xml", urlset([site.url + page for page in pages]))
    site.add(
        "/robots.txt",
        "User-agent: googlebot\nDisallow: /\n\n"
        "User-agent: *\nAllow: /private/open/\nDisallow: /private/\nDisallow: /tmp\n"
        "Crawl-delay: 1.5\n",
    )
    crawled = await crawl_async(nats_url, tmp_path, site.url)
    _, specs = await submitted_tasks(bus, crawled.job_id)
    kept = sorted(urls_of(specs))
    assert kept == sorted(site.url + p for p in ["/", "/about", "/private/open/b", "/shop/cart"])
    assert {spec.args["crawl_delay_s"] for spec in specs} == {1.5}
    assert "2 disallowed by robots.txt" in crawled.stderr
    assert "Crawl-delay 1.5s" in crawled.stderr


async def test_include_exclude_duplicates_and_other_sites(
    bus: Bus, nats_url: str, tmp_path: Path, site: Site
) -> None:
    pages = [
        "/blog/one",
        "/blog/one#comments",
        "/blog/two",
        "/blog/drafts/three",
        "/shop/item",
        "/blog/one",
    ]
    listed = [site.url + page for page in pages]
    listed += ["https://elsewhere.example/blog/four", "mailto:someone@example.com"]
    site.add("/sitemap.xml", urlset(listed))
    crawled = await crawl_async(
        nats_url,
        tmp_path,
        "--sitemap",
        f"{site.url}/sitemap.xml",
        "--include",
        "/blog/*",
        "--exclude",
        "/blog/drafts/*",
        "--header",
        "X-Warm: yes",
        "--rate",
        "5",
        "--concurrency",
        "3",
        "--user-agent",
        "acme-warmer/2",
    )
    header, specs = await submitted_tasks(bus, crawled.job_id)
    assert urls_of(specs) == [f"{site.url}/blog/one", f"{site.url}/blog/two"]
    assert "2 duplicates" in crawled.stderr and "1 off-site" in crawled.stderr
    assert "1 invalid" in crawled.stderr
    args = specs[0].args
    assert args["headers"] == {"X-Warm": "yes"} and args["user_agent"] == "acme-warmer/2"
    assert (args["rate"], args["concurrency"]) == (5.0, 3)
    assert header.sealed, "a small crawl is one job.submitted"
    assert site.user_agents == {"acme-warmer/2"}


async def test_urls_from_stdin_any_site_labelled_urls(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    lines = "# pages to warm\nhttps://a.example/x\n\nHTTPS://A.example:443/x\nhttp://b.example/y\n"
    crawled = await crawl_async(nats_url, tmp_path, "--urls-file", "-", stdin=lines)
    header, specs = await submitted_tasks(bus, crawled.job_id)
    assert urls_of(specs) == ["https://a.example/x", "http://b.example/y"]
    assert header.labels == {"crawl": "urls", "pass": "1"}
    assert crawled.output["crawl"] == "urls"


def assert_clean_error(crawled: Crawled, exit_code: int, *fragments: str) -> None:
    assert crawled.code == exit_code, (crawled.code, crawled.stderr)
    assert "Traceback" not in crawled.stderr
    error = [line for line in crawled.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, crawled.stderr
    for fragment in fragments:
        assert fragment in error[0], error[0]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["http//example.com"], ["site 'http//example.com' is not usable", "http://"]),
        (["ftp://example.com/"], ["not an http:// or https:// URL"]),
        (["https://exa mple.com/"], ["whitespace"]),
        (["https://example.com:99999/"], ["Port out of range"]),
        (["--sitemap", "https:///sitemap.xml"], ["--sitemap", "no host"]),
        (["https://a.example", "--sitemap", "https://a.example/s.xml"], ["give one of"]),
        (["https://a.example", "--header", "no colon"], ["is not 'Name: value'"]),
        (["https://a.example", "--include", "blog/*"], ["must start with / or *"]),
        (["--urls-file", "missing.txt"], ["cannot read URLs file missing.txt"]),
    ],
)
async def test_a_malformed_command_line_is_exit_2_and_sends_nothing(
    bus: Bus, nats_url: str, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    before = await bus.stream_last_seq()
    assert_clean_error(await crawl_async(nats_url, tmp_path, *args), 2, *fragments)
    assert await bus.stream_last_seq() == before


async def test_a_bad_line_of_a_urls_file_names_it_before_anything_is_sent(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("https://a.example/1\nhttps://a.example/2\nnot a url\n")
    before = await bus.stream_last_seq()
    crawled = await crawl_async(nats_url, tmp_path, "--urls-file", str(urls))
    assert_clean_error(crawled, 2, f"{urls}:3: URL 'not a url' is not usable")
    assert await bus.stream_last_seq() == before


async def test_an_unreachable_host_is_exit_3_and_sends_nothing(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    before = await bus.stream_last_seq()
    crawled = await crawl_async(nats_url, tmp_path, "http://127.0.0.1:1", "--timeout", "5")
    assert_clean_error(crawled, 3, "cannot reach the site at http://127.0.0.1:1/robots.txt")
    assert await bus.stream_last_seq() == before


@pytest.mark.parametrize(
    ("serve", "fragments"),
    [
        ({"/sitemap.xml": "this is { not xml"}, ["sitemap", "is not XML: syntax error"]),
        ({"/sitemap.xml": "<html><body>Home</body></html>"}, ["root element is <html>"]),
        ({}, ["no sitemap found", "/sitemap.xml answered 404", "/sitemap_index.xml answered 404"]),
        (
            {"/sitemap.xml": '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><urlset/>'},
            ["declares a document type"],
        ),
        (
            {"/sitemap.xml": urlset(["https://elsewhere.example/a"]).decode()},
            ["no URL to crawl", "1 off-site"],
        ),
        ({"/sitemap.xml": urlset([]).decode()}, ["no URL to crawl"]),
    ],
)
async def test_a_site_without_usable_sitemap_is_exit_2_and_sends_nothing(
    bus: Bus, nats_url: str, tmp_path: Path, site: Site, serve: dict[str, str], fragments: list[str]
) -> None:
    for path, body in serve.items():
        site.add(path, body)
    before = await bus.stream_last_seq()
    assert_clean_error(await crawl_async(nats_url, tmp_path, site.url), 2, *fragments)
    assert await bus.stream_last_seq() == before


async def test_a_given_sitemap_answering_404_is_exit_2(
    bus: Bus, nats_url: str, tmp_path: Path, site: Site
) -> None:
    crawled = await crawl_async(nats_url, tmp_path, "--sitemap", f"{site.url}/gone.xml")
    assert_clean_error(crawled, 2, f"sitemap {site.url}/gone.xml answered 404 Not Found")


async def test_a_robots_txt_answering_503_is_exit_3(
    nats_url: str, tmp_path: Path, site: Site
) -> None:
    site.add("/robots.txt", "busy", status=503)
    site.add("/sitemap.xml", urlset([f"{site.url}/a"]))
    crawled = await crawl_async(nats_url, tmp_path, site.url)
    assert_clean_error(crawled, 3, "robots.txt answered 503", "RFC 9309")


@pytest.mark.parametrize(
    ("robots", "why"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "it holds binary data"),
        (b"<!doctype html><html><body>Welcome!</body></html>", "it has no robots.txt directive"),
        (b"Disalow everything please\nUser agent = me", "it has no robots.txt directive"),
    ],
)
async def test_a_garbage_robots_txt_is_treated_as_empty_with_a_note(
    bus: Bus, nats_url: str, tmp_path: Path, site: Site, robots: bytes, why: str
) -> None:
    site.add("/robots.txt", robots)
    site.add("/sitemap.xml", urlset([f"{site.url}/a", f"{site.url}/b"]))
    crawled = await crawl_async(nats_url, tmp_path, site.url)
    assert f"note: {site.url}/robots.txt is not a robots.txt ({why}" in crawled.stderr
    _, specs = await submitted_tasks(bus, crawled.job_id)
    assert urls_of(specs) == [f"{site.url}/a", f"{site.url}/b"]


async def test_a_failing_child_sitemap_is_skipped_with_a_warning(
    bus: Bus, nats_url: str, tmp_path: Path, site: Site
) -> None:
    site.add("/good.xml", urlset([f"{site.url}/a"]))
    site.add("/broken.xml", "garbage <<")
    children = [f"{site.url}/{name}" for name in ("good.xml", "missing.xml", "broken.xml")]
    site.add("/sitemap_index.xml", sitemap_index(children))
    crawled = await crawl_async(nats_url, tmp_path, site.url)
    assert f"warning: skipped sitemap {site.url}/missing.xml: sitemap" in crawled.stderr
    assert f"warning: skipped sitemap {site.url}/broken.xml: sitemap" in crawled.stderr
    assert "2 sitemaps skipped" in crawled.stderr
    _, specs = await submitted_tasks(bus, crawled.job_id)
    assert urls_of(specs) == [f"{site.url}/a"]


async def test_a_sitemap_broken_after_the_first_batch_leaves_the_job_rejected(
    bus: Bus, nats_url: str, tmp_path: Path, site: Site
) -> None:
    good = urlset([f"{site.url}/page/{index}" for index in range(5000)])
    site.add("/sitemap.xml", good.removesuffix(b"</urlset>") + b"<url><loc>x</loc></oops>")
    crawled = await crawl_async(nats_url, tmp_path, site.url)
    assert_clean_error(crawled, 2, "is not XML: mismatched tag")
    await assert_only_rejected_jobs(bus)


async def test_a_site_gone_after_the_first_batch_is_exit_3_and_leaves_the_job_rejected(
    bus: Bus, nats_url: str, tmp_path: Path, site: Site
) -> None:
    whole = urlset([f"{site.url}/page/{index}" for index in range(10_000)])
    cut = whole[: len(whole) * 2 // 3]
    site.add("/sitemap.xml", cut, Content_Length=str(len(whole)))
    crawled = await crawl_async(nats_url, tmp_path, site.url)
    assert_clean_error(crawled, 3, f"cannot reach the site at {site.url}/sitemap.xml")
    await assert_only_rejected_jobs(bus)


async def test_a_bad_line_on_stdin_after_the_first_batch_leaves_the_job_rejected(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    lines = "".join(f"https://a.example/page/{index}\n" for index in range(5000)) + "oops\n"
    crawled = await crawl_async(nats_url, tmp_path, "--urls-file", "-", stdin=lines)
    assert_clean_error(crawled, 2, "-:5001: URL 'oops' is not usable")
    await assert_only_rejected_jobs(bus)


async def assert_only_rejected_jobs(bus: Bus) -> None:
    """Some of the job was sent (it was streamed), and its last word is a rejection."""
    log = await read_log(bus)
    headers = [e for e in log if isinstance(e, JobSubmitted)]
    assert len(headers) == 1 and not headers[0].sealed
    assert any(isinstance(e, JobTasksAdded) for e in log), "a batch was sent before the error"
    last = await bus.last_on_subject(job_subject(headers[0].job_id))
    assert last is not None and isinstance(last[1], JobRejected), last
    assert not any(isinstance(e, JobSealed) for e in log)


# --- --wait and --passes, with a stand-in for the http.warm handler ---------------------


async def stand_in_warm(args: Mapping[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """A page fetched once, its `X-Cache` reported as the contract's `cache` (the real
    handler, with warming and politeness, is another branch's)."""
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(args["url"])
    if response.status_code >= 500:
        raise PermanentError(f"HTTP {response.status_code} for {args['url']}")
    return {
        "url": args["url"],
        "pass": args["pass"],
        "status": response.status_code,
        "cache": response.headers.get("X-Cache", "unknown"),
    }


def miss_then_hit(count: int) -> Answer:
    return Answer(b"<p>page</p>", headers={"X-Cache": "MISS" if count == 1 else "HIT"})


@contextlib.asynccontextmanager
async def dispatcher_and_worker(bus: Bus) -> AsyncIterator[None]:
    registry = HandlerRegistry.default()
    registry.add("http.warm", stand_in_warm)
    worker = Worker(bus, options=WorkerOptions(concurrency=16), handlers=registry)
    async with running(Dispatcher(bus, lease_s=10).run, worker.run):
        yield


async def test_two_passes_run_in_turn_and_each_reports_its_cache_hit_ratio(
    bus: Bus, nats_url: str, tmp_path: Path, site: Site
) -> None:
    pages = [f"/p/{index}" for index in range(30)]
    for page in pages:
        site.routes[page] = miss_then_hit
    site.add("/gone", "no such page", status=404)
    site.add("/sitemap.xml", urlset([site.url + page for page in [*pages, "/gone"]]))
    async with dispatcher_and_worker(bus):
        crawled = await crawl_async(nats_url, tmp_path, site.url, "--passes", "2")
    passes = crawled.output["passes"]
    assert isinstance(passes, list)
    first, second = passes
    assert (first["pass"], second["pass"]) == (1, 2)
    for shown in passes:
        assert (shown["status"], shown["pages"], shown["failed"]) == ("completed", 31, 0)
        assert shown["broken_links"] == 1
    assert (first["cache_hits"], second["cache_hits"]) == (0, 30)
    assert second["hit_ratio"] == round(30 / 31, 4)
    assert all(site.requests[page] == 2 for page in pages)
    log = await read_log(bus)
    ended = next(i for i, e in enumerate(log) if isinstance(e, JobCompleted))
    header = next(
        (i, e)
        for i, e in enumerate(log)
        if isinstance(e, JobSubmitted) and e.job_id == second["job_id"]
    )
    assert header[0] > ended, "pass 2 is submitted once pass 1 has ended"
    assert header[1].labels == {"crawl": site.host, "pass": "2"}
    assert {spec.args["pass"] for spec in header[1].tasks} == {2}


async def test_wait_exits_1_when_pages_failed(
    bus: Bus, nats_url: str, tmp_path: Path, site: Site
) -> None:
    site.add("/fine", "ok")
    site.add("/down", "oops", status=500)
    site.add("/sitemap.xml", urlset([f"{site.url}/fine", f"{site.url}/down"]))
    async with dispatcher_and_worker(bus):
        result = await asyncio.to_thread(
            subprocess.run,
            [*JOBSTREAM, "crawl", "--nats-url", nats_url, site.url, "--wait"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            check=False,
        )
    assert result.returncode == 1, result.stderr
    assert "pass 1: failed, 2 pages: 1 answered (0 broken links), 1 failed" in result.stdout


def jobstream(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*JOBSTREAM, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


async def test_a_crawl_is_an_ordinary_job_for_status_and_dlq(
    bus: Bus, nats_url: str, database_url: str, tmp_path: Path, site: Site
) -> None:
    site.add("/fine", "ok")
    site.add("/down", "oops", status=500)
    site.add("/sitemap.xml", urlset([f"{site.url}/fine", f"{site.url}/down"]))
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with dispatcher_and_worker(bus), running(PostgresProjector(bus, pool).run):
            crawled = await crawl_async(nats_url, tmp_path, site.url, "--wait")
            await wait_until_projected(bus, database_url, timeout_s=30)
    finally:
        await pool.close()
    assert crawled.code == 1, crawled.stderr
    job_id = json.loads(crawled.stdout)["passes"][0]["job_id"]
    where = ("--database-url", database_url)
    status = await asyncio.to_thread(jobstream, "status", job_id, "--json", *where, cwd=tmp_path)
    shown = json.loads(status.stdout)
    assert (shown["tasks"]["succeeded"], shown["tasks"]["dead_lettered"]) == (1, 1), shown
    dead = await asyncio.to_thread(
        jobstream, "dlq", "list", "--job", job_id, "--json", *where, cwd=tmp_path
    )
    rows = [json.loads(line) for line in dead.stdout.splitlines()]
    assert [row["kind"] for row in rows] == ["http.warm"]
    assert "HTTP 500" in rows[0]["error"]


async def test_a_cancelled_crawl_ends_its_wait_with_exit_1(
    bus: Bus, nats_url: str, tmp_path: Path, site: Site
) -> None:
    site.add("/sitemap.xml", urlset([f"{site.url}/page/{index}" for index in range(50)]))
    async with running(Dispatcher(bus, lease_s=10).run):  # no worker: nothing runs
        waiting = asyncio.create_task(crawl_async(nats_url, tmp_path, site.url, "--wait"))
        job_id = await _first_job_id(bus)
        cancel = await asyncio.to_thread(
            jobstream, "cancel", job_id, "--nats-url", nats_url, cwd=tmp_path
        )
        assert cancel.returncode == 0, cancel.stderr
        crawled = await asyncio.wait_for(waiting, 60)
    assert crawled.code == 1, crawled.stderr
    shown = json.loads(crawled.stdout)["passes"][0]
    assert (shown["status"], shown["cancelled"], shown["answered"]) == ("cancelled", 50, 0)


async def _first_job_id(bus: Bus) -> str:
    for _ in range(300):
        for event in await read_log(bus):
            if isinstance(event, JobSubmitted):
                return event.job_id
        await asyncio.sleep(0.05)
    pytest.fail("no job was submitted")


async def test_a_crawl_run_again_with_its_key_is_the_same_job(
    bus: Bus, nats_url: str, tmp_path: Path, site: Site
) -> None:
    site.add("/sitemap.xml", urlset([f"{site.url}/a", f"{site.url}/b"]))
    first = await crawl_async(nats_url, tmp_path, site.url, "--idempotency-key", "nightly")
    again = await crawl_async(nats_url, tmp_path, site.url, "--idempotency-key", "nightly")
    assert first.job_id == again.job_id
    assert json.loads(again.stdout)["passes"][0]["duplicate"] is True
    assert "already submitted" in again.stderr
    log = await read_log(bus)
    assert len([e for e in log if isinstance(e, JobSubmitted)]) == 1
    assert site.requests["/sitemap.xml"] == 1, "a duplicate is known before discovery"
