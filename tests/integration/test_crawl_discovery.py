"""Discovery on its own against local web sites (no NATS): fallbacks, nested indexes, loops,
other hosts, and the cap stopping the fetches."""

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from jobstream.cli.crawl._discover import MAX_SITEMAP_DEPTH, Discovery
from jobstream.cli.crawl._errors import DiscoveryError
from jobstream.cli.crawl._fetch import discovery_client
from jobstream.cli.crawl._urls import PathFilter
from tests._sites import Site, sitemap_index, urlset

UA = "jobstream-warm/test"


@pytest.fixture
def site() -> Iterator[Site]:
    with Site() as serving:
        yield serving


@dataclass
class Found:
    urls: list[str]
    discovery: Discovery
    notes: list[str]


async def discover(site_url: str, *, max_urls: int | None = None) -> Found:
    notes: list[str] = []
    async with discovery_client(user_agent=UA, timeout_s=5, headers={}) as client:
        discovery = Discovery(
            client, user_agent=UA, paths=PathFilter([], []), max_urls=max_urls, note=notes.append
        )
        urls = [url async for url in discovery.from_site(site_url)]
    return Found(urls, discovery, notes)


async def test_sitemap_index_xml_is_the_second_fallback(site: Site) -> None:
    site.add("/sitemap_index.xml", sitemap_index([f"{site.url}/pages.xml"]))
    site.add("/pages.xml", urlset([f"{site.url}/a", "https://other.example/b"]))
    found = await discover(site.url)
    assert found.urls == [f"{site.url}/a"] and found.discovery.report.off_site == 1
    assert site.requests["/sitemap.xml"] == 1 and site.requests["/robots.txt"] == 1
    assert found.discovery.report.sitemaps_read == 3  # the missing one, the index, its child


async def test_an_index_naming_itself_is_read_once(site: Site) -> None:
    site.add("/sitemap.xml", sitemap_index([f"{site.url}/sitemap.xml", f"{site.url}/p.xml"]))
    site.add("/p.xml", urlset([f"{site.url}/a"]))
    found = await discover(site.url)
    assert found.urls == [f"{site.url}/a"]
    assert site.requests["/sitemap.xml"] == 1


async def test_indexes_nested_too_deep_are_skipped(site: Site) -> None:
    depth = MAX_SITEMAP_DEPTH + 2
    for level in range(depth):
        site.add(
            f"/index-{level}.xml",
            sitemap_index([f"{site.url}/index-{level + 1}.xml", f"{site.url}/pages-{level}.xml"]),
        )
        site.add(f"/pages-{level}.xml", urlset([f"{site.url}/level-{level}"]))
    site.add("/robots.txt", f"Sitemap: {site.url}/index-0.xml\n")
    found = await discover(site.url)
    # index-0 is depth 0; the sitemaps index-3 names are one level too deep.
    assert found.urls == [f"{site.url}/level-{n}" for n in range(MAX_SITEMAP_DEPTH - 1, -1, -1)]
    assert found.discovery.report.sitemaps_skipped == 2
    assert any("sitemap indexes deep" in note for note in found.notes)


async def test_a_child_on_an_unreachable_host_is_skipped(site: Site) -> None:
    site.add("/sitemap.xml", sitemap_index(["http://127.0.0.1:1/s.xml", f"{site.url}/p.xml"]))
    site.add("/p.xml", urlset([f"{site.url}/a"]))
    found = await discover(site.url)
    assert found.urls == [f"{site.url}/a"]
    assert any("cannot reach the site at http://127.0.0.1:1/s.xml" in n for n in found.notes)


async def test_the_cap_stops_fetching(site: Site) -> None:
    children = [f"{site.url}/p{index}.xml" for index in range(5)]
    site.add("/sitemap.xml", sitemap_index(children))
    for index in range(5):
        site.add(f"/p{index}.xml", urlset([f"{site.url}/{index}/{n}" for n in range(10)]))
    found = await discover(site.url, max_urls=15)
    assert len(found.urls) == 15 and found.discovery.report.capped
    assert [site.requests[f"/p{index}.xml"] for index in range(5)] == [1, 1, 0, 0, 0]


async def test_robots_sitemaps_that_fail_are_errors(site: Site) -> None:
    site.add("/robots.txt", f"Sitemap: {site.url}/gone.xml\n")
    with pytest.raises(DiscoveryError, match=r"gone\.xml answered 404"):
        await discover(site.url)


async def test_a_body_that_cannot_be_decoded_is_a_discovery_error(site: Site) -> None:
    site.add("/sitemap.xml", "<urlset/> is not gzip", Content_Encoding="gzip")
    with pytest.raises(DiscoveryError, match=r"sitemap\.xml: DecodingError"):
        await discover(site.url)


async def test_given_urls_are_filtered_deduplicated_and_capped() -> None:
    lines = [b"https://a.example/blog/1\n", b"# a comment\n", b"https://A.example/blog/1#top\n"]
    lines += [f"https://b.example/blog/{n}\n".encode() for n in range(10)]
    lines += [b"https://a.example/shop\n"]
    async with discovery_client(user_agent=UA, timeout_s=5, headers={}) as client:
        discovery = Discovery(
            client, user_agent=UA, paths=PathFilter(["/blog/*"], []), max_urls=5, note=print
        )
        urls = [url async for url in discovery.from_lines(lines, where="urls.txt")]
    assert urls == ["https://a.example/blog/1"] + [f"https://b.example/blog/{n}" for n in range(4)]
    assert discovery.report.duplicates == 1 and discovery.report.capped


async def test_a_bad_given_url_names_its_line() -> None:
    async with discovery_client(user_agent=UA, timeout_s=5, headers={}) as client:
        discovery = Discovery(
            client, user_agent=UA, paths=PathFilter([], []), max_urls=None, note=print
        )
        with pytest.raises(DiscoveryError, match=r"urls\.txt:2: URL 'www\.a\.example/x'"):
            _ = [
                u
                async for u in discovery.from_lines(
                    [b"https://a.example/\n", b"www.a.example/x"], where="urls.txt"
                )
            ]
