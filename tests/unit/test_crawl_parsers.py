"""The crawl's parsers on their own: sitemaps fed in pieces, gzip, robots.txt, URLs, paths."""

import gzip

import pytest

from jobstream.cli.crawl._errors import DiscoveryError
from jobstream.cli.crawl._robots import parse_robots
from jobstream.cli.crawl._sitemap import BodyDecoder, SitemapKind, SitemapParser
from jobstream.cli.crawl._tasks import parse_header
from jobstream.cli.crawl._urls import PathFilter, SeenUrls, normalise_url, same_site

NS = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'
UA = "jobstream-warm/0.1.0 (+https://github.com/jobstream)"


def parse_in_pieces(document: bytes, piece: int) -> tuple[SitemapKind | None, list[str]]:
    parser = SitemapParser("test.xml")
    found: list[tuple[SitemapKind, str]] = []
    for start in range(0, len(document), piece):
        found += parser.feed(document[start : start + piece])
    found += parser.close()
    assert {kind for kind, _ in found} <= {parser.kind}
    return parser.kind, [loc for _, loc in found]


@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_a_urlset_gives_its_locs_whatever_the_pieces(piece: int) -> None:
    document = (
        f'<?xml version="1.0" encoding="UTF-8"?><urlset {NS}>'
        "<url><loc> https://a.example/1 </loc><lastmod>2026-01-01</lastmod></url>"
        "<url><loc>https://a.example/2?x=1&amp;y=2</loc></url>"
        "<url><priority>0.5</priority></url>"
        "</urlset>"
    ).encode()
    assert parse_in_pieces(document, piece) == (
        SitemapKind.URLSET,
        ["https://a.example/1", "https://a.example/2?x=1&y=2"],
    )


def test_an_index_gives_its_sitemaps_and_ignores_other_locs() -> None:
    document = (
        f"<sitemapindex {NS}><sitemap><loc>https://a.example/s1.xml.gz</loc></sitemap>"
        "<other><loc>https://a.example/not-this</loc></other></sitemapindex>"
    ).encode()
    assert parse_in_pieces(document, 5) == (SitemapKind.INDEX, ["https://a.example/s1.xml.gz"])


def test_a_sitemap_without_a_namespace_is_read() -> None:
    document = b"<urlset><url><loc>https://a.example/</loc></url></urlset>"
    assert parse_in_pieces(document, 100)[1] == ["https://a.example/"]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"plain text", "is not XML: syntax error"),
        (b"<urlset><url><loc>x</loc></url>", "is not XML: no element found"),
        (b"<html><body/></html>", "root element is <html>"),
        (b"", "is empty"),
        (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 '
            b'"&lol;&lol;&lol;&lol;">]><urlset><url><loc>&lol2;</loc></url></urlset>',
            "declares a document type",
        ),
        (
            b'<!DOCTYPE urlset SYSTEM "file:///etc/passwd"><urlset/>',
            "declares a document type",
        ),
    ],
)
def test_what_is_not_a_sitemap_is_a_discovery_error(document: bytes, message: str) -> None:
    with pytest.raises(DiscoveryError, match=message):
        parse_in_pieces(document, 3)


def test_an_overlong_loc_is_cut_not_buffered() -> None:
    document = b"<urlset><url><loc>https://a.example/" + b"x" * 100_000 + b"</loc></url></urlset>"
    [loc] = parse_in_pieces(document, 1000)[1]
    assert len(loc) < 10_000


def decode_all(decoder: BodyDecoder, data: bytes, piece: int) -> bytes:
    out = b""
    for start in range(0, len(data), piece):
        out += b"".join(decoder.decode(data[start : start + piece]))
    return out + b"".join(decoder.finish())


@pytest.mark.parametrize("piece", [1, 100, 1 << 20])
def test_gzip_is_told_by_its_first_bytes(piece: int) -> None:
    document = b"<urlset>" + b"<url><loc>https://a.example/</loc></url>" * 1000 + b"</urlset>"
    assert decode_all(BodyDecoder("s"), gzip.compress(document), piece) == document
    assert decode_all(BodyDecoder("s"), document, piece) == document


def test_truncated_or_corrupt_gzip_is_a_discovery_error() -> None:
    packed = gzip.compress(b"<urlset/>" * 1000)
    with pytest.raises(DiscoveryError, match="ends early"):
        decode_all(BodyDecoder("s"), packed[: len(packed) // 2], 64)
    with pytest.raises(DiscoveryError, match="bad gzip data"):
        decode_all(BodyDecoder("s"), packed[:10] + b"\xff" * 50, 64)


def test_a_gzip_bomb_stops_at_the_size_bound() -> None:
    bound = 8 * 1024 * 1024
    bomb = gzip.compress(b"\0" * (bound * 4), compresslevel=9)
    assert len(bomb) < bound // 250
    decoder = BodyDecoder("bomb", max_bytes=bound)
    inflated = 0
    with pytest.raises(DiscoveryError, match="over 8,388,608 bytes uncompressed"):
        for start in range(0, len(bomb), 65536):
            for data in decoder.decode(bomb[start : start + 65536]):
                inflated += len(data)
    assert inflated <= bound


ROBOTS = b"""# rules
User-agent: Googlebot
Disallow: /
Crawl-delay: 9

User-agent: *
Allow: /private/open/
Disallow: /private/
Crawl-delay: 0.5
Sitemap: https://a.example/sitemap_index.xml
Sitemap: https://a.example/news.xml
"""


def test_robots_gives_sitemaps_delay_and_rules_for_our_agent() -> None:
    parsed = parse_robots(ROBOTS, UA)
    rules = parsed.rules
    assert parsed.garbage is None
    assert rules.sitemaps == ["https://a.example/sitemap_index.xml", "https://a.example/news.xml"]
    assert rules.crawl_delay_s == 0.5
    assert rules.allows("https://a.example/")
    assert rules.allows("https://a.example/private/open/x")
    assert not rules.allows("https://a.example/private/x")


def test_a_group_naming_our_agent_wins_over_the_star_group() -> None:
    robots = b"User-agent: *\nDisallow: /\nCrawl-delay: 5\n\nUser-agent: jobstream-warm\nAllow: /\n"
    rules = parse_robots(robots, UA).rules
    assert rules.allows("https://a.example/page")
    assert rules.crawl_delay_s is None, "our group sets no delay; the * group's is not ours"


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan"])
def test_an_unusable_crawl_delay_is_none(value: str) -> None:
    robots = f"User-agent: *\nCrawl-delay: {value}\n".encode()
    assert parse_robots(robots, UA).rules.crawl_delay_s is None


@pytest.mark.parametrize(
    ("body", "garbage"),
    [
        (b"", None),
        (b"# only a comment\n\n", None),
        (b"\x00\x01\x02binary", "it holds binary data"),
        (b"<html><body>Not found</body></html>", "it has no robots.txt directive"),
        (b'{"rules": []}', "it has no robots.txt directive"),
    ],
)
def test_an_empty_or_garbage_robots_allows_everything(body: bytes, garbage: str | None) -> None:
    parsed = parse_robots(body, UA)
    assert parsed.garbage == garbage
    assert parsed.rules.allows("https://a.example/anything")
    assert parsed.rules.sitemaps == [] and parsed.rules.crawl_delay_s is None


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("HTTPS://Example.COM", "https://example.com/"),
        ("https://example.com:443/a?b=1#frag", "https://example.com/a?b=1"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("http://example.com:8080/a", "http://example.com:8080/a"),
        ("  https://example.com/a  ", "https://example.com/a"),
        ("http://[::1]:8000/x", "http://[::1]:8000/x"),
        ("https://user@example.com/", "https://example.com/"),
    ],
)
def test_urls_are_normalised(given: str, normalised: str) -> None:
    assert normalise_url(given) == normalised


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("", "empty URL"),
        ("example.com/page", "not an http:// or https:// URL"),
        ("ftp://example.com/", "not an http:// or https:// URL"),
        ("https:///path", "no host"),
        ("https://exa mple.com/", "whitespace"),
        ("https://example.com/\x07", "control characters"),
        ("https://example.com:70000/", "Port out of range"),
        ("https://example.com/" + "a" * 2048, "longer than 2048"),
    ],
)
def test_unusable_urls_say_why(given: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        normalise_url(given)


def test_same_site_ignores_scheme_port_and_www() -> None:
    assert same_site("https://www.a.example/x", "http://a.example:8080/")
    assert not same_site("https://b.a.example/x", "https://a.example/")
    assert not same_site("https://a.example.evil/x", "https://a.example/")


def test_path_filter_includes_then_excludes() -> None:
    paths = PathFilter(["/blog/*", "/news"], ["*/draft*"])
    assert paths.keeps("https://a.example/blog/post")
    assert paths.keeps("https://a.example/news?page=2")
    assert not paths.keeps("https://a.example/blog/draft-1")
    assert not paths.keeps("https://a.example/shop")
    assert PathFilter([], []).keeps("https://a.example/anything")
    with pytest.raises(DiscoveryError, match="must start with / or"):
        PathFilter(["blog"], [])


def test_seen_urls_keeps_each_once() -> None:
    seen = SeenUrls()
    assert seen.add("https://a.example/1") and seen.add("https://a.example/2")
    assert not seen.add("https://a.example/1")
    assert len(seen) == 2


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("Authorization: Bearer x:y", ("Authorization", "Bearer x:y")),
        ("X-Empty:", ("X-Empty", "")),
    ],
)
def test_headers_are_name_colon_value(text: str, parsed: tuple[str, str]) -> None:
    assert parse_header(text) == parsed


@pytest.mark.parametrize("text", ["no colon", "Bad Name: x", ": x"])
def test_a_bad_header_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not 'Name: value'"):
        parse_header(text)
