"""One `http.warm` request against a site on 127.0.0.1: timings through httpx's trace
extension (connect only on a new connection), the redirect chain, the body counted."""

import httpx

from jobstream.bench._sites import Reply, Request, Site, serving
from jobstream.services.worker.warm._fetch import fetch


def answer(request: Request) -> Reply:
    if request.path == "/old":
        return Reply(status=301, headers={"location": "/new"})
    return Reply(headers={"cf-cache-status": "HIT"}, body=b"x" * 5000, delay_s=0.05)


async def test_timings_redirects_and_bytes() -> None:
    site = Site(answer)
    async with serving(site), httpx.AsyncClient() as client:
        first = await fetch(client, "GET", site.url("/old"), headers={}, timeout_s=5)
        again = await fetch(client, "GET", site.url("/new"), headers={}, timeout_s=5)
        head = await fetch(client, "HEAD", site.url("/new"), headers={}, timeout_s=5)
    assert first.status == 200
    assert first.redirects == [{"url": site.url("/old"), "status": 301}]
    assert first.final_url == site.url("/new")
    assert first.bytes == 5000
    assert first.cache.value == "HIT"
    assert first.cache_header == "cf-cache-status: HIT"
    timings = first.timings.as_dict()
    assert timings["dns"] is None  # resolved inside the TCP connect: not observable apart
    assert timings["connect"] is not None and timings["connect"] >= 0
    assert timings["tls"] is None  # plain http
    ttfb, total = timings["ttfb"], timings["total"]
    assert ttfb is not None and total is not None
    assert 50 <= ttfb <= total
    # The connection was kept: no connect the second time.
    assert again.timings.as_dict()["connect"] is None
    assert again.redirects == []
    assert (head.status, head.bytes) == (200, 0)
