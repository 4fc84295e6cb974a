"""Finding a site's pages: robots.txt, then its sitemaps (indexes followed, gzip or not), or
a list of URLs; each page kept once, on the site, allowed, filtered, up to the cap. URLs come
out as they are found, so a sitemap of a million pages is never held whole."""

import contextlib
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass

import httpx

from jobstream.cli.crawl._errors import DiscoveryError, SitemapMissing, SiteUnreachable
from jobstream.cli.crawl._fetch import check_sitemap_answer, read_capped, streamed_get
from jobstream.cli.crawl._robots import ALLOW_ALL, MAX_ROBOTS_BYTES, RobotsRules, parse_robots
from jobstream.cli.crawl._sitemap import BodyDecoder, SitemapKind, SitemapParser
from jobstream.cli.crawl._urls import (
    PathFilter,
    SeenUrls,
    checked_url,
    normalise_url,
    origin_of,
    site_name,
)

FALLBACK_SITEMAPS = ("/sitemap.xml", "/sitemap_index.xml")
# An index that names an index that names an index: deeper is a loop or a mistake.
MAX_SITEMAP_DEPTH = 3
MAX_SITEMAPS = 10_000


@dataclass
class DiscoveryReport:
    """What discovery found and set aside, for the user."""

    urls: int = 0
    sitemaps_read: int = 0
    sitemaps_skipped: int = 0
    duplicates: int = 0
    off_site: int = 0
    disallowed: int = 0
    filtered_out: int = 0
    invalid: int = 0
    capped: bool = False
    crawl_delay_s: float | None = None

    def line(self) -> str:
        asides = [
            f"{count} {what}"
            for count, what in (
                (self.duplicates, "duplicates"),
                (self.disallowed, "disallowed by robots.txt"),
                (self.off_site, "off-site"),
                (self.filtered_out, "excluded by --include/--exclude"),
                (self.invalid, "invalid"),
                (self.sitemaps_skipped, "sitemaps skipped"),
            )
            if count
        ]
        found = f"{self.urls} URLs" + (" (--max-urls reached)" if self.capped else "")
        where = f" from {self.sitemaps_read} sitemap(s)" if self.sitemaps_read else ""
        aside = f"; set aside: {', '.join(asides)}" if asides else ""
        return f"found {found}{where}{aside}"


class Discovery:
    """One crawl's discovery; `note` tells the user what was set aside as it happens."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        user_agent: str,
        paths: PathFilter,
        max_urls: int | None,
        note: Callable[[str], None],
    ) -> None:
        self.client = client
        self.user_agent = user_agent
        self.paths = paths
        self.max_urls = max_urls
        self.note = note
        self.report = DiscoveryReport()
        self.robots: RobotsRules = ALLOW_ALL
        self._seen = SeenUrls()
        self._sitemaps_seen: set[str] = set()
        self._site = ""

    @property
    def full(self) -> bool:
        return self.max_urls is not None and self.report.urls >= self.max_urls

    # --- the three sources ---------------------------------------------------------

    async def from_site(self, site_url: str) -> AsyncGenerator[str, None]:
        """The pages of the sitemaps robots.txt names, else of /sitemap.xml or
        /sitemap_index.xml."""
        self._site = site_name(site_url)
        await self.read_robots(site_url)
        if self.robots.sitemaps:
            found = self._roots(self.robots.sitemaps)
        else:
            found = self._fallback(origin_of(site_url))
        async with contextlib.aclosing(found) as urls:
            async for url in urls:
                yield url
        self._check_found(site_url)

    async def from_sitemap(self, sitemap_url: str) -> AsyncGenerator[str, None]:
        """The pages of one sitemap (or index), on its site, as its robots.txt allows."""
        self._site = site_name(sitemap_url)
        await self.read_robots(sitemap_url)
        async with contextlib.aclosing(self._walk(sitemap_url, depth=0)) as urls:
            async for url in urls:
                yield url
        self._check_found(sitemap_url)

    async def from_lines(self, lines: Iterable[bytes], *, where: str) -> AsyncGenerator[str, None]:
        """URLs given one a line (blank lines and `#` comments skipped), taken as given: any
        site, no robots.txt; a line that is no URL is an error naming it."""
        for number, raw in enumerate(lines, start=1):
            text = raw.decode("utf-8", errors="replace").strip()
            if not text or text.startswith("#"):
                continue
            url = checked_url(text, what=f"{where}:{number}: URL")
            if self._keep(url):
                yield url
                if self.full:
                    return
        self._check_found(where)

    # --- robots.txt ------------------------------------------------------------------

    async def read_robots(self, site_url: str) -> None:
        url = origin_of(site_url) + "/robots.txt"
        async with streamed_get(self.client, url) as response:
            status = response.status_code
            if status >= 500:
                raise SiteUnreachable(
                    url,
                    f"robots.txt answered {status}; until it answers, RFC 9309 says a crawler"
                    " must take the whole site as disallowed",
                )
            if status >= 400:
                return  # no robots.txt: everything is allowed
            body = await read_capped(response, MAX_ROBOTS_BYTES)
        parsed = parse_robots(body, self.user_agent)
        if parsed.garbage:
            self.note(f"note: {url} is not a robots.txt ({parsed.garbage}); treated as empty")
        self.robots = parsed.rules
        self.report.crawl_delay_s = parsed.rules.crawl_delay_s

    # --- sitemaps --------------------------------------------------------------------

    async def _roots(self, sitemaps: list[str]) -> AsyncGenerator[str, None]:
        for sitemap in sitemaps:
            if self.full:
                return
            if sitemap in self._sitemaps_seen:
                continue
            async with contextlib.aclosing(self._walk(sitemap, depth=0)) as urls:
                async for url in urls:
                    yield url

    async def _fallback(self, origin: str) -> AsyncGenerator[str, None]:
        tried: list[str] = []
        for path in FALLBACK_SITEMAPS:
            sitemap = origin + path
            try:
                async with contextlib.aclosing(self._walk(sitemap, depth=0)) as urls:
                    async for url in urls:
                        yield url
                return
            except SitemapMissing as exc:
                if self.report.urls:  # it went missing while being read: no fallback
                    raise
                tried.append(str(exc))
        raise DiscoveryError(
            f"no sitemap found for {origin}: robots.txt names none, and "
            f"{'; '.join(tried)}. Give --sitemap URL or --urls-file FILE"
        )

    async def _walk(self, sitemap: str, *, depth: int) -> AsyncGenerator[str, None]:
        """The pages of `sitemap` and of the sitemaps it indexes. A sitemap given or named by
        robots.txt must be good; one an index names is skipped, with a note, when it fails."""
        children: list[str] = []
        async with contextlib.aclosing(self._locs(sitemap)) as locs:
            async for kind, loc in locs:
                if kind is SitemapKind.INDEX:
                    self._add_child(loc, children)
                    continue
                url = self._page(loc)
                if url is not None:
                    yield url
                    if self.full:
                        return
        for child in children:
            if self.full:
                return
            if depth + 1 > MAX_SITEMAP_DEPTH:
                self._skip(child, f"more than {MAX_SITEMAP_DEPTH} sitemap indexes deep")
                continue
            try:
                async with contextlib.aclosing(self._walk(child, depth=depth + 1)) as urls:
                    async for url in urls:
                        yield url
            except (DiscoveryError, SiteUnreachable) as exc:
                self._skip(child, str(exc))

    def _add_child(self, loc: str, children: list[str]) -> None:
        try:
            child = normalise_url(loc)
        except ValueError as exc:
            self._skip(loc[:200], f"not a URL ({exc})")
            return
        if child in self._sitemaps_seen:
            return
        if len(self._sitemaps_seen) >= MAX_SITEMAPS:
            self._skip(child, f"over {MAX_SITEMAPS} sitemaps")
            return
        self._sitemaps_seen.add(child)
        children.append(child)

    def _skip(self, sitemap: str, why: str) -> None:
        self.report.sitemaps_skipped += 1
        self.note(f"warning: skipped sitemap {sitemap}: {why}")

    async def _locs(self, sitemap: str) -> AsyncGenerator[tuple[SitemapKind, str], None]:
        """The `<loc>`s of one sitemap document, as its body streams in."""
        self._sitemaps_seen.add(sitemap)
        self.report.sitemaps_read += 1
        async with streamed_get(self.client, sitemap) as response:
            check_sitemap_answer(response, sitemap)
            body = BodyDecoder(sitemap)
            parser = SitemapParser(sitemap)
            async for chunk in response.aiter_bytes():
                for data in body.decode(chunk):
                    for found in parser.feed(data):
                        yield found
            for data in body.finish():
                for found in parser.feed(data):
                    yield found
            for found in parser.close():
                yield found

    # --- one URL ---------------------------------------------------------------------

    def _page(self, loc: str) -> str | None:
        """A page's URL from a sitemap if it is to be crawled, counted otherwise."""
        try:
            url = normalise_url(loc)
        except ValueError:
            self.report.invalid += 1
            return None
        if site_name(url) != self._site:
            self.report.off_site += 1
            return None
        if not self.robots.allows(url):
            self.report.disallowed += 1
            return None
        return url if self._keep(url) else None

    def _keep(self, url: str) -> bool:
        if self.full:
            return False
        if not self.paths.keeps(url):
            self.report.filtered_out += 1
            return False
        if not self._seen.add(url):
            self.report.duplicates += 1
            return False
        self.report.urls += 1
        self.report.capped = self.full
        return True

    def _check_found(self, where: str) -> None:
        if self.report.urls == 0:
            raise DiscoveryError(f"no URL to crawl in {where} ({self.report.line()})")
