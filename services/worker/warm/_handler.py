"""The `http.warm` task kind: fetch one page politely, record how it was served, and where the
cache missed, make it warm and measure the difference."""

import asyncio
import importlib.util
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import nats.js.errors
from nats.js import JetStreamContext

from jobstream.events import DOMAINS_BUCKET, utc_now
from jobstream.services.worker._handlers import Defer, PermanentError, Retry, TaskContext
from jobstream.services.worker.warm._args import WarmArgs, parse_args
from jobstream.services.worker.warm._cache import COLD, CacheStatus
from jobstream.services.worker.warm._fetch import MAX_REDIRECTS, Answer, fetch
from jobstream.services.worker.warm._gate import DomainGate, Pass
from jobstream.services.worker.warm._politeness import Limits, Outcome, retry_after_s

log = logging.getLogger(__name__)

# Answers that mean "slow down": the domain is slowed fleet-wide and the task deferred.
SLOW_DOWN_STATUSES = frozenset({429, 503})
# After this many deferrals a slow-down answer counts as a failed attempt, so that a domain
# that always answers 503 ends in dead letters rather than in a task put back forever.
MAX_SLOW_DOWN_DEFERRALS = 10
# The pause before the first check of a cache that missed, drawn from this range.
WARM_PAUSE_S = (0.2, 0.5)
# A warming request waits this long for the domain's turn at most, else warming stops.
WARM_MAX_WAIT_S = 2.0
# A slot outlives the longest a task may hold it by this much (then a killed worker's frees).
SLOT_MARGIN_S = 1.0
MAX_CONNECTIONS = 200


class ThrottledError(Exception):
    """A 429/503 while warming: the domain is slowed, warming stops."""


@dataclass
class _Visit:
    """One task's requests to one domain, holding one of its slots."""

    client: httpx.AsyncClient
    gate: DomainGate
    args: WarmArgs
    limits: Limits
    slot: Pass | None

    async def request(self, method: str, url: str) -> Answer:
        """A request; network errors and 5xx ask for a retry, a 429/503 slows the domain."""
        headers = {**self.args.headers, "user-agent": self.args.user_agent}
        try:
            async with asyncio.timeout(self.args.timeout_s):
                answer = await fetch(
                    self.client, method, url, headers=headers, timeout_s=self.args.timeout_s
                )
        except TimeoutError:
            limit_s = self.args.timeout_s
            raise Retry(f"Timeout: no full answer within {limit_s}s for {url}") from None
        except httpx.TooManyRedirects:
            raise PermanentError(f"more than {MAX_REDIRECTS} redirects from {url}") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise PermanentError(f"{type(exc).__name__}: {exc} ({url})") from None
        except httpx.TransportError as exc:
            detail = f": {exc}" if str(exc) else ""
            raise Retry(f"{type(exc).__name__}{detail} for {url}") from None
        if answer.status in SLOW_DOWN_STATUSES:
            await self._slow_down(answer)
        if answer.status >= 500:
            raise Retry(f"HTTP {answer.status} {answer.reason} for {url}")
        return answer

    async def _slow_down(self, answer: Answer) -> None:
        assert self.slot is not None
        wait_s = retry_after_s(answer.headers.get("retry-after"), utc_now())
        blocked_s = await self.gate.slow_down(self.slot, wait_s)
        self.slot = None
        raise ThrottledError(f"HTTP {answer.status} {answer.reason}", blocked_s)

    async def warm(self, first: Answer) -> dict[str, Any] | None:
        """Check with HEAD (after a short pause each time) until the cache answers HIT, then
        GET again; None if the domain's pace or a slow-down stopped it first."""
        checks = 0
        for _ in range(self.args.warm_checks):
            await asyncio.sleep(random.uniform(*WARM_PAUSE_S))
            if not await self._turn():
                return None
            checks += 1
            if (await self.request("HEAD", first.final_url)).cache is CacheStatus.HIT:
                break
        if not await self._turn():
            return None
        second = await self.request("GET", first.final_url)
        return {
            "checks": checks,
            "cache": second.cache.value,
            "status": second.status,
            "total_ms": round(second.timings.total, 3),
        }

    async def _turn(self) -> bool:
        assert self.slot is not None
        return await self.gate.pace(self.slot, self.limits, max_wait_s=WARM_MAX_WAIT_S)


class WarmHandler:
    """`http.warm`: one HTTP client per worker process (connections reused, HTTP/2 where the
    server offers it and `h2` is installed), and the fleet-wide gate of each domain."""

    max_attempts = 5

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None
        self._js: JetStreamContext | None = None
        self._gate: DomainGate | None = None

    async def open(self, js: JetStreamContext, *, worker_id: str) -> None:
        self._js = js
        self._client = httpx.AsyncClient(
            http2=importlib.util.find_spec("h2") is not None,
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
            ),
            max_redirects=MAX_REDIRECTS,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __call__(self, args: Mapping[str, Any], ctx: TaskContext) -> dict[str, Any]:
        warm_args, domain = parse_args(args)
        if self._client is None or self._js is None:
            raise RuntimeError("http.warm runs in a worker (its client is opened with it)")
        gate = await self._domain_gate(self._js)
        limits = Limits(rate=warm_args.requests_per_s, concurrency=warm_args.concurrency)
        lease_s = _slot_lease_s(warm_args)
        slot = await gate.enter(
            domain,
            limits,
            holder=f"{ctx.worker_id}/{ctx.task_id}",
            lease_s=lease_s,
            deferrals=ctx.deferrals,
        )
        visit = _Visit(self._client, gate, warm_args, limits, slot)
        outcome = Outcome.FAILURE
        try:
            first = await visit.request("GET", warm_args.url)
            warmed = await self._warm(visit, first) if warm_args.warm else None
            outcome = Outcome.SUCCESS
        except ThrottledError as exc:
            message, blocked_s = exc.args
            raise _put_back(f"{message} for {warm_args.url}", blocked_s, ctx) from None
        finally:
            if visit.slot is not None:
                await _leave(gate, visit.slot, outcome)
        return _result(warm_args, domain, first, warmed)

    async def _domain_gate(self, js: JetStreamContext) -> DomainGate:
        """The bucket, found at the first page (a worker of other kinds never needs it)."""
        if self._gate is None:
            try:
                kv = await js.key_value(DOMAINS_BUCKET)
            except nats.js.errors.BucketNotFoundError:
                raise RuntimeError(
                    f"no {DOMAINS_BUCKET} bucket on this NATS: run `jobstream init`"
                ) from None
            self._gate = DomainGate(kv)
        return self._gate

    async def _warm(self, visit: _Visit, first: Answer) -> dict[str, Any] | None:
        if first.cache not in COLD or not 200 <= first.status < 300:
            return None
        try:
            return await visit.warm(first)
        except (Retry, PermanentError, ThrottledError) as exc:
            log.info("warming %s stopped: %s", first.final_url, exc.args[0])
            return None


def _slot_lease_s(args: WarmArgs) -> float:
    """The longest a task holds its slot: each request's timeout, and before each warming
    request its pause and its wait for the domain's turn."""
    warming = args.warm_checks + 1 if args.warm else 0
    return (
        args.timeout_s
        + warming * (args.timeout_s + WARM_PAUSE_S[1] + WARM_MAX_WAIT_S)
        + SLOT_MARGIN_S
    )


def _put_back(error: str, blocked_s: float, ctx: TaskContext) -> Exception:
    """A page answered 429/503: deferred until the domain's block ends, while deferrals last."""
    delay_s = blocked_s + random.uniform(0, 0.5)
    if ctx.deferrals < MAX_SLOW_DOWN_DEFERRALS:
        return Defer(error, delay_s=delay_s)
    return Retry(error, delay_s=delay_s)


async def _leave(gate: DomainGate, slot: Pass, outcome: Outcome) -> None:
    """Free the slot; if the bucket cannot be reached, its lease frees it later."""
    try:
        await gate.leave(slot, outcome)
    except Exception as exc:
        log.warning("domain %s: slot left to expire: %s", slot.domain, type(exc).__name__)


def _result(
    args: WarmArgs, domain: str, first: Answer, warmed: dict[str, Any] | None
) -> dict[str, Any]:
    saved = None if warmed is None else round(first.timings.total - warmed["total_ms"], 3)
    return {
        "url": args.url,
        "final_url": first.final_url,
        "domain": domain,
        "pass": args.pass_,
        "status": first.status,
        "redirects": first.redirects,
        "cache": first.cache.value,
        "cache_header": first.cache_header,
        "timings_ms": first.timings.as_dict(),
        "bytes": first.bytes,
        "content_type": first.content_type,
        "warm": warmed,
        "time_saved_ms": saved,
    }
