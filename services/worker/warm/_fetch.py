"""One HTTP request, timed through httpx's `trace` extension, its body counted, not kept."""

import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httpx

from jobstream.services.worker.warm._cache import CacheStatus, cache_status

MAX_REDIRECTS = 10


@dataclass
class Timings:
    """Milliseconds from the request's start. httpcore resolves the name inside its TCP
    connect, so DNS is never seen apart from `connect`; a reused connection has neither
    connect nor TLS."""

    started: float = field(default_factory=time.perf_counter)
    dns: float | None = None
    connect: float | None = None
    tls: float | None = None
    ttfb: float | None = None
    total: float = 0.0
    _phase_started: dict[str, float] = field(default_factory=dict)

    async def trace(self, name: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        step, _, stage = name.rpartition(".")
        if stage == "started":
            self._phase_started[step] = now
            return
        if stage != "complete":
            return
        began = self._phase_started.pop(step, now)
        spent_ms = (now - began) * 1000
        if step.endswith("connect_tcp"):
            self.connect = (self.connect or 0.0) + spent_ms
        elif step.endswith("start_tls"):
            self.tls = (self.tls or 0.0) + spent_ms
        elif step.endswith("receive_response_headers"):
            self.ttfb = (now - self.started) * 1000  # the last hop's, after any redirects

    def as_dict(self) -> dict[str, float | None]:
        return {
            "dns": _round(self.dns),
            "connect": _round(self.connect),
            "tls": _round(self.tls),
            "ttfb": _round(self.ttfb),
            "total": round(self.total, 3),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    headers: httpx.Headers
    final_url: str
    redirects: list[dict[str, Any]]
    cache: CacheStatus
    cache_header: str | None
    bytes: int
    timings: Timings

    @property
    def content_type(self) -> str | None:
        value: str | None = self.headers.get("content-type")
        return value


async def fetch(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    timeout_s: float,
    follow_redirects: bool = True,
) -> Answer:
    """Send one request (following redirects), read its body to the end, and time it all.
    Raises httpx's errors (transport errors, timeouts, too many redirects)."""
    timings = Timings()
    request = client.build_request(
        method,
        url,
        headers=headers,
        timeout=httpx.Timeout(timeout_s),
        extensions={"trace": timings.trace},
    )
    response = await client.send(request, stream=True, follow_redirects=follow_redirects)
    try:
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
    finally:
        await response.aclose()
    timings.total = (time.perf_counter() - timings.started) * 1000
    status, header = cache_status(response.headers)
    return Answer(
        status=response.status_code,
        reason=response.reason_phrase or _phrase(response.status_code),
        headers=response.headers,
        final_url=str(response.url),
        redirects=[{"url": str(hop.url), "status": hop.status_code} for hop in response.history],
        cache=status,
        cache_header=header,
        bytes=size,
        timings=timings,
    )


def _phrase(status: int) -> str:
    """HTTP/2 has no reason phrase: the standard one."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
