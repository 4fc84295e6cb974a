"""The requests of one dashboard page view, counted in a real browser: Debian's headless
Chromium driven by Playwright (a development dependency; never a browser of Playwright's own),
each page opened fresh (a new browser context: nothing cached) and every request counted from
the navigation's start for `window_s` seconds. The API's own (JSON and the live event stream)
are told apart from the page's files (`/`, `/static/…`, the favicon)."""

import asyncio
import shutil
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

BROWSER_ARGS = ["--no-sandbox", "--disable-dev-shm-usage"]
GOTO_TIMEOUT_MS = 30_000


@dataclass(frozen=True, kw_only=True)
class PageView:
    api_requests: int
    static_requests: int
    # The API requests in the order the browser made them (path and query).
    api_paths: list[str]
    # Navigation start → the page's load event.
    load_ms: float


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _is_static(path: str) -> bool:
    return path in {"/", "/favicon.ico"} or path.startswith("/static/")


async def count_page_requests(
    base_url: str, pages: dict[str, str], *, window_s: float
) -> dict[str, PageView] | None:
    """Each of `pages` (name → path after `base_url`) opened once; None without a browser."""
    chromium = _chromium()
    if chromium is None:
        return None
    try:
        from playwright.async_api import Request, async_playwright
    except ModuleNotFoundError:
        return None
    views: dict[str, PageView] = {}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        try:
            for name, path in pages.items():
                context = await browser.new_context()
                try:
                    page = await context.new_page()
                    seen: list[str] = []

                    def on_request(request: Request, seen: list[str] = seen) -> None:
                        parts = urlsplit(request.url)
                        seen.append(parts.path + (f"?{parts.query}" if parts.query else ""))

                    page.on("request", on_request)
                    started = time.monotonic()
                    await page.goto(base_url + path, timeout=GOTO_TIMEOUT_MS)
                    load_ms = 1000 * (time.monotonic() - started)
                    await asyncio.sleep(max(0.0, window_s - (time.monotonic() - started)))
                    counted = list(seen)
                finally:
                    await context.close()
                api = [p for p in counted if not _is_static(urlsplit(p).path)]
                views[name] = PageView(
                    api_requests=len(api),
                    static_requests=len(counted) - len(api),
                    api_paths=api,
                    load_ms=round(load_ms, 1),
                )
        finally:
            await browser.close()
    return views
