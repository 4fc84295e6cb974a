"""The dashboard in a real browser (Debian's headless Chromium, driven by Playwright) against a
real stack: dispatcher, projector, a worker and the API as `jobstream` processes, while a job
runs. It sees the counts and the chart change, drills into a job, a task and the timeline,
finds dead letters with their retry command, and saves screenshots (into docs/screenshots/
with JOBSTREAM_UPDATE_SCREENSHOTS=1).

Skipped only when no Chromium is installed (`.ci/run` installs Debian's `chromium`); the
Playwright package drives that browser, and never downloads one of its own.
"""

import asyncio
import inspect
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Dialog, Page, async_playwright, expect

from jobstream.events import Bus
from jobstream.services.api import create_app
from jobstream.services.stack import free_port
from tests._serving import serving
from tests.faults._harness import REPO_ROOT, Processes, submit
from tests.integration.crawl_log import DOMAINS, crawl_log
from tests.integration.test_api_live import project_all

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The README's screenshots are rewritten only when asked (JOBSTREAM_UPDATE_SCREENSHOTS=1), so a
# test run leaves the working tree as it was; otherwise they go to a temporary folder.
SCREENSHOTS = (
    REPO_ROOT / "docs" / "screenshots"
    if os.environ.get("JOBSTREAM_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.mkdtemp(prefix="jobstream-screenshots-"))
)
SLEEP_TASKS = 600
SLEEP_S = 0.1
CONCURRENCY = 4
WAIT_S = 60.0
UI_TIMEOUT_MS = 30_000
TOKEN = "dashboard-test-token"

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)"),
    pytest.mark.timeout(240),
]


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while loop.time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM is not None
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            await launched.close()


async def _int(page: Page, selector: str) -> int:
    return int(re.sub(r"[^0-9]", "", await page.inner_text(selector)) or "0")


async def _chart_total(page: Page) -> int:
    """Tasks the throughput chart shows (succeeded + failed over all its minutes)."""
    total = await page.evaluate(
        """() => { const c = charts["chart-throughput"]; if (!c) return 0;
                   return c.data[1].concat(c.data[2]).reduce((a, b) => a + (b || 0), 0); }"""
    )
    return int(total)


async def _overview_while_running(
    page: Page, url: str, submit_job: Callable[[], Awaitable[str]]
) -> str:
    """The overview before and while a job runs: counts and the chart change. The job's id."""
    await page.goto(url)
    await expect(page.locator("#live")).to_have_class(re.compile(r"\bok\b"))
    await expect(page.locator("#count-failed")).to_have_text("1")
    before_chart = await _chart_total(page)
    job_id = await submit_job()
    await expect(page.locator("#count-running")).to_have_text("1")
    await expect(page.locator("#jobs-table")).to_contain_text(job_id)

    async def chart_moved() -> bool:
        return await _chart_total(page) > before_chart

    await _until(chart_moved, "the throughput chart to change")
    await expect(page.locator("#lag-table")).to_contain_text("postgres")
    return job_id


async def _job_and_task(page: Page, job_id: str) -> None:
    """Search by name, open the job (its progress moves; tasks paged; timeline), filter its
    tasks by state, open one task and its attempt."""
    await page.click("header nav >> text=Jobs")
    await page.fill("#job-search", "nightly")
    await page.press("#job-search", "Enter")
    await expect(page.locator("#jobs-table tbody tr")).to_have_count(1)
    await page.click(f"#jobs-table >> text={job_id}")
    await expect(page.locator("#job-header")).to_contain_text("nightly-sleep")
    first_ended = await page.inner_text("#job-ended")

    async def ended_moved() -> bool:
        return await page.inner_text("#job-ended") != first_ended

    await _until(ended_moved, "the job's progress to change")
    await expect(page.locator("#job-rate")).to_contain_text("/s")
    await expect(page.locator("#job-eta")).not_to_have_text("—")
    await expect(page.locator("#tasks-table tbody tr")).to_have_count(50)
    timeline = page.locator("#timeline-table")
    await expect(timeline).to_contain_text("job.submitted")
    await expect(timeline).to_contain_text("task.succeeded")
    await page.screenshot(path=str(SCREENSHOTS / "job.png"), full_page=True)
    await page.click(".next-page")  # the second page of tasks, by the API's cursor
    await expect(page.locator("#tasks-table tbody tr").first.locator("td").first).to_have_text("50")

    await page.select_option("#task-state", "succeeded")
    await expect(page.locator("#tasks-table tbody tr").first).to_contain_text("succeeded")
    await page.locator("#tasks-table tbody tr a").first.click()
    await expect(page.locator("#attempts-table tbody tr")).to_have_count(1)
    await expect(page.locator("#attempts-table")).to_contain_text("succeeded")
    await expect(page.locator("#task-facts")).to_contain_text(job_id)


async def _dead_letters(page: Page, url: str, job_id: str) -> None:
    """A failed job: its dead letters with the command that retries each; one of them."""
    await page.goto(f"{url}#/job/{job_id}")
    await expect(page.locator("#dead-table tbody tr")).to_have_count(2)
    await expect(page.locator("#dead-table")).to_contain_text("jobstream dlq retry")
    await expect(page.locator("#timeline-table")).to_contain_text("task.dead_lettered")
    await page.locator("#dead-table tbody tr a").first.click()
    await expect(page.locator("#attempts-table")).to_contain_text("boom")
    await page.screenshot(path=str(SCREENSHOTS / "task.png"), full_page=True)


async def _served(url: str, path: str) -> bool:
    """The API has the route (an API without it answers FastAPI's own 404)."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        response = await client.get(path)
    return not (response.status_code == 404 and response.json()["detail"] == "Not Found")


async def _dead_letters_and_worker(page: Page, url: str) -> None:
    """All dead letters with their retry commands, and one worker; or, on an API without
    those endpoints, "not available" rather than a broken page."""
    await page.goto(f"{url}#/dead-letters")
    if await _served(url, "dead-letters"):
        table = page.locator("#dead-letters-table")
        await expect(table.locator("tbody tr")).to_have_count(2)
        await expect(table).to_contain_text("jobstream dlq retry")
    else:
        await expect(page.locator("#dead-letters")).to_contain_text("not available")
    await page.goto(f"{url}#/worker/w1")
    if await _served(url, "workers/w1"):
        await expect(page.locator("#worker-facts")).to_contain_text("in flight")
    else:
        await expect(page.locator("#worker")).to_contain_text("not available")


async def test_dashboard_live_drill_down_and_screenshots(
    nats_url: str, database_url: str, tmp_path: Path, browser: Browser
) -> None:
    data = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with Processes(tmp_path / "logs") as procs:
        procs.dispatcher(nats_url, data_dir=data)
        procs.projector(nats_url, database_url=database_url, data_dir=data)
        procs.worker("w1", nats_url, data_dir=data, concurrency=CONCURRENCY)
        procs.start(
            "api", "api", "--nats-url", nats_url, "--database-url", database_url,
            "--port", str(port), "--data-dir", str(data),
        )  # fmt: skip
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:

            async def api_ready() -> bool:
                try:
                    return (await client.get("readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await _until(api_ready, "the API to be ready")
        broken = await submit(
            nats_url, data, "--kind", "fail", "--args", '{"message": "boom"}',
            "--max-attempts", "1", "--count", "2", "--name", "broken-import",
        )  # fmt: skip

        async def submit_sleepy() -> str:
            return await submit(
                nats_url, data, "--kind", "sleep", "--args", json.dumps({"seconds": SLEEP_S}),
                "--count", str(SLEEP_TASKS), "--name", "nightly-sleep",
            )  # fmt: skip

        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(url)
        completed_before = await _int(page, "#count-completed")
        sleepy = await _overview_while_running(page, url, submit_sleepy)
        await _job_and_task(page, sleepy)
        await _dead_letters(page, url, broken)

        # The job ends; the overview's count of completed jobs goes up. (Hash links: the same
        # page, with what it has seen live since it opened.)
        await page.goto(f"{url}#/")
        await expect(page.locator("#count-completed")).to_have_text(str(completed_before + 1))
        await page.screenshot(path=str(SCREENSHOTS / "overview.png"), full_page=True)
        await page.goto(f"{url}#/workers")
        await expect(page.locator("#workers-table")).to_contain_text("w1")
        await _dead_letters_and_worker(page, url)
        assert errors == []
        procs.assert_running()


_TOKENS = "api_token" in inspect.signature(create_app).parameters


@pytest.mark.skipif(not _TOKENS, reason="this API has no bearer token yet")
async def test_dashboard_asks_for_the_token_once_and_sends_it(
    bus: Bus, nats_url: str, database_url: str, browser: Browser
) -> None:
    app = create_app(database_url=database_url, nats_urls=[nats_url], api_token=TOKEN)  # type: ignore[call-arg,unused-ignore]
    async with serving(app) as client:
        assert (await client.get("/jobs")).status_code == 401
        page = await browser.new_page()
        prompts: list[str] = []

        async def answer(dialog: Dialog) -> None:
            prompts.append(dialog.message)
            await dialog.accept(TOKEN)

        page.on("dialog", answer)
        await page.goto(f"{client.base_url}/#/jobs")
        await expect(page.locator("#jobs-table")).to_contain_text("no jobs match")
        await expect(page.locator("#live")).to_have_class(re.compile(r"\bok\b"))
        await page.goto(f"{client.base_url}/#/")
        await page.reload()  # a new load: the token is kept for the tab, not asked again
        await expect(page.locator("#jobs-table")).to_be_visible()
        assert len(prompts) == 1 and "token" in prompts[0]
        assert await page.evaluate("sessionStorage.getItem('jobstream.token')") == TOKEN
        await page.close()  # its live stream, which the server would wait for


async def test_a_crawls_page_shows_its_statistics(
    bus: Bus, nats_url: str, database_url: str, browser: Browser
) -> None:
    """A crawl's log (written by hand, projected), then its job page: the crawl's figures."""
    log = crawl_log("crawl-ui", datetime.now(UTC) - timedelta(minutes=5))
    for event in log.events:
        await bus.publish_event(event)
    await project_all(bus, database_url)
    app = create_app(database_url=database_url, nats_urls=[nats_url])
    async with serving(app) as client:
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        # Found by its labels (and not by another label's value).
        await page.goto(f"{client.base_url}/#/jobs")
        await page.fill("#job-search", "label:crawl=example label:pass=2")
        await page.press("#job-search", "Enter")
        await expect(page.locator("#jobs-table")).to_contain_text("no jobs match")
        await page.fill("#job-search", "label:crawl=example label:pass=1 status:running")
        await page.press("#job-search", "Enter")
        await expect(page.locator("#jobs-filter")).to_contain_text("label:pass=1")
        await page.click("#jobs-table >> text=crawl-ui")
        crawl = page.locator("#crawl-section")
        await expect(crawl).to_be_visible(timeout=UI_TIMEOUT_MS)
        for shown in ("cache hit ratio", "per pass", "per domain", "broken links", DOMAINS[0]):
            await expect(crawl).to_contain_text(shown)
        await expect(page.locator("#dead-table")).to_contain_text("jobstream dlq retry")
        await crawl.screenshot(path=str(SCREENSHOTS / "crawl.png"))
        assert errors == []
        await page.close()
