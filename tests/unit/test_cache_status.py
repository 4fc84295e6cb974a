"""The cache status of each CDN's headers, in one vocabulary."""

import httpx
import pytest

from jobstream.services.worker.warm import CacheStatus, cache_status

H = CacheStatus


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"CF-Cache-Status": "HIT"}, H.HIT),
        ({"cf-cache-status": "MISS"}, H.MISS),
        ({"cf-cache-status": "EXPIRED"}, H.EXPIRED),
        ({"cf-cache-status": "STALE"}, H.STALE),
        ({"cf-cache-status": "BYPASS"}, H.BYPASS),
        ({"cf-cache-status": "DYNAMIC"}, H.DYNAMIC),
        ({"cf-cache-status": "REVALIDATED"}, H.REVALIDATED),
        ({"cf-cache-status": "UPDATING"}, H.UPDATING),
        ({"X-Cache": "Hit from cloudfront"}, H.HIT),
        ({"X-Cache": "Miss from cloudfront"}, H.MISS),
        ({"X-Cache": "RefreshHit from cloudfront"}, H.REVALIDATED),
        ({"X-Cache": "Error from cloudfront"}, H.UNKNOWN),
        ({"X-Cache": "MISS, HIT"}, H.HIT),  # Fastly: shield, then the edge that answered
        ({"X-Cache": "HIT, MISS"}, H.MISS),
        ({"X-Cache": "HIT"}, H.HIT),  # Varnish
        ({"X-Cache": "TCP_MISS from a23-1-2-3.deploy.akamaitechnologies.com"}, H.MISS),
        ({"X-Cache-Remote": "TCP_HIT from a1.deploy.akamaitechnologies.com"}, H.HIT),
        ({"X-Cache-Remote": "TCP_REFRESH_MISS from a1"}, H.EXPIRED),
        ({"X-Cache-Remote": "TCP_MEM_HIT from a1"}, H.HIT),
        ({"x-vercel-cache": "HIT"}, H.HIT),
        ({"x-vercel-cache": "PRERENDER"}, H.HIT),
        ({"x-vercel-cache": "STALE"}, H.STALE),
        ({"x-vercel-cache": "MISS"}, H.MISS),
        ({"Cache-Status": "ExampleCache; hit"}, H.HIT),
        ({"Cache-Status": "ExampleCache; fwd=miss; stored"}, H.MISS),
        ({"Cache-Status": "ExampleCache; fwd=uri-miss"}, H.MISS),
        ({"Cache-Status": "Origin; fwd=miss, CDN; hit"}, H.HIT),
        ({"Cache-Status": "Origin; hit, CDN; fwd=uri-miss"}, H.MISS),
        ({"Cache-Status": "CDN; hit; ttl=-12"}, H.STALE),
        ({"Cache-Status": "CDN; fwd=stale; fwd-status=304"}, H.REVALIDATED),
        ({"Cache-Status": "CDN; fwd=stale; fwd-status=200"}, H.EXPIRED),
        ({"Cache-Status": "CDN; fwd=bypass"}, H.BYPASS),
        ({"X-Varnish": "32770 98315"}, H.HIT),
        ({"X-Varnish": "32770"}, H.MISS),
        ({"Age": "120"}, H.HIT),
        ({"Age": "0"}, H.MISS),
        ({"Age": "soon"}, H.UNKNOWN),
        ({}, H.UNKNOWN),
        ({"Server": "nginx"}, H.UNKNOWN),
        # The most specific header decides; an unknown word gives way to the next.
        ({"CF-Cache-Status": "MISS", "Age": "30"}, H.MISS),
        ({"CF-Cache-Status": "NONE", "Age": "30"}, H.HIT),
    ],
)
def test_each_cdn_header(headers: dict[str, str], expected: CacheStatus) -> None:
    assert cache_status(httpx.Headers(headers))[0] is expected


def test_the_header_it_came_from() -> None:
    headers = httpx.Headers({"CF-Cache-Status": "MISS", "Age": "3"})
    assert cache_status(headers) == (H.MISS, "cf-cache-status: MISS")
    assert cache_status(httpx.Headers({})) == (H.UNKNOWN, None)
