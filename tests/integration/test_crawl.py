"""`jobstream crawl` against local web sites and a real nats-server: pages found from robots.txt
and sitemaps become one ordinary streamed job of `http.warm` tasks; bad input gets a clear
message and leaves nothing half-submitted."""

import asyncio
import gzip
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from events import Bus, JobRejected, JobSealed, JobSubmitted, JobTasksAdded, TaskSpec
from tests._sites import Site, sitemap_index, urlset
from tests.integration.test_worker_dispatcher import read_log

JOBSTREAM = [sys.executable, "-m", "cli"]


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
