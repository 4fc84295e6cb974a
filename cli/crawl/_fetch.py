"""GETs of discovery (robots.txt, sitemaps) as streams, their failures in the crawl's terms."""

import contextlib
from collections.abc import AsyncIterator

import httpx

from jobstream.cli.crawl._errors import DiscoveryError, SitemapMissing, SiteUnreachable

MISSING = (404, 410)


def discovery_client(
    *, user_agent: str, timeout_s: float, headers: dict[str, str]
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        headers={**headers, "User-Agent": user_agent},
        timeout=timeout_s,
        follow_redirects=True,
        max_redirects=10,
    )


@contextlib.asynccontextmanager
async def streamed_get(client: httpx.AsyncClient, url: str) -> AsyncIterator[httpx.Response]:
    """The response to GET `url`, its body not read yet. `SiteUnreachable` when no answer
    came (also while the body streams); `DiscoveryError` for a URL httpx cannot ask, or a
    body it cannot decode."""
    try:
        async with client.stream("GET", url) as response:
            yield response
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise DiscoveryError(f"cannot ask for {url}: {exc}") from None
    except httpx.TransportError as exc:
        raise SiteUnreachable(url, _describe(exc)) from None
    except httpx.TooManyRedirects:
        raise DiscoveryError(f"{url} redirects too many times") from None
    except httpx.HTTPError as exc:  # a body that cannot be decoded (a bad Content-Encoding)
        raise DiscoveryError(f"{url}: {_describe(exc)}") from None


def check_sitemap_answer(response: httpx.Response, url: str) -> None:
    if response.status_code in MISSING:
        raise SitemapMissing(f"sitemap {url} answered {_status(response)}")
    if response.status_code >= 400:
        raise DiscoveryError(f"sitemap {url} answered {_status(response)}")


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """At most `limit` bytes of the body; the rest is not fetched."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= limit:
            return bytes(body[:limit])
    return bytes(body)


def _status(response: httpx.Response) -> str:
    return f"{response.status_code} {response.reason_phrase}".strip()


def _describe(exc: httpx.HTTPError) -> str:
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
