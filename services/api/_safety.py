"""What makes the API safe to expose: a bearer token, CORS origins, a per-client-IP rate
limit and security headers.

Routes are protected by default: every route needs the token (when one is set) except the
`PUBLIC_PATHS` (probes and the dashboard page, which asks for the token itself); the live
stream also takes it as `?token=`, since a browser's EventSource cannot send headers.
"""

import base64
import hashlib
import hmac
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobstream.services.api._errors import error_response
from jobstream.services.api._params import RETRY_AFTER, json_error

PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz"})
QUERY_TOKEN_PATHS = frozenset({"/events/stream"})
MAX_TOKEN_LENGTH = 4096
DEFAULT_RATE_LIMIT_PER_S = 20.0
DEFAULT_RATE_LIMIT_BURST = 200
# Clients remembered at once; beyond that the least recently seen are forgotten (they start
# again with a full bucket), so a flood of addresses cannot exhaust memory.
MAX_TRACKED_CLIENTS = 10_000
CORS_MAX_AGE_S = 600
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
    "object-src 'none'"
)
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)
_REALM = 'Bearer realm="jobstream"'
# A page's inline <script> and <style> blocks (no attributes): allowed by their hashes alone.
_INLINE_BLOCK = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="The API's token (`JOBSTREAM_API_TOKEN`), as `Authorization: Bearer <token>`",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]

# Written out as JSON (not `model=`): the live stream's own media type is not JSON.
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: json_error(
        "No bearer token, or not this API's",
        {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    )
}
TOO_MANY: dict[int | str, dict[str, Any]] = {
    429: json_error("Too many requests from this client address", RETRY_AFTER)
}


# --- the token --------------------------------------------------------------


def _check_token(request: Request, presented: str | None) -> None:
    expected: bytes | None = request.app.state.api_token
    if expected is None:
        return
    if presented is None:
        raise HTTPException(
            401,
            "this API needs a token: send 'Authorization: Bearer <token>' "
            "(the token the API was started with, JOBSTREAM_API_TOKEN)",
            headers={"WWW-Authenticate": _REALM},
        )
    if not hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), expected):
        raise HTTPException(
            401,
            "the bearer token is not this API's token",
            headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
        )


async def require_token(request: Request, credentials: Credentials) -> None:
    """The request's bearer token is the API's."""
    _check_token(request, credentials.credentials if credentials else None)


async def require_token_or_query(
    request: Request,
    credentials: Credentials,
    token: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_TOKEN_LENGTH,
            description="the API's token, for clients that cannot send headers (EventSource); "
            "the Authorization header wins when both are given",
        ),
    ] = None,
) -> None:
    """The bearer token, or else the `token` query parameter, is the API's."""
    _check_token(request, credentials.credentials if credentials else token)


def include_guarded(
    app: FastAPI, routers: Iterable[APIRouter], *, token: bool, rate_limited: bool
) -> None:
    """Include `routers`: public paths as they are; with a token, every other route needs it
    (and the live stream accepts it in its query). Each documents the answers it may get."""
    limit = TOO_MANY if rate_limited else {}
    for router in routers:
        public, by_query, guarded = APIRouter(), APIRouter(), APIRouter()
        for route in router.routes:
            path = getattr(route, "path", "")
            target = guarded
            if path in PUBLIC_PATHS:
                target = public
            elif path in QUERY_TOKEN_PATHS:
                target = by_query
            target.routes.append(route)
        app.include_router(public, responses=limit)
        if token:
            app.include_router(
                by_query,
                dependencies=[Depends(require_token_or_query)],
                responses=UNAUTHORIZED | limit,
            )
            app.include_router(
                guarded, dependencies=[Depends(require_token)], responses=UNAUTHORIZED | limit
            )
        else:
            app.include_router(by_query, responses=limit)
            app.include_router(guarded, responses=limit)


# The OpenAPI document, served like any other JSON route (FastAPI's own is not, and its
# /docs pages load scripts from a CDN, which the Content-Security-Policy refuses).
document_router = APIRouter()


@document_router.get("/openapi.json", include_in_schema=False)
async def openapi_document(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


# --- the rate limit ---------------------------------------------------------


class TokenBuckets:
    """A token bucket per client: `burst` requests at once, refilled at `per_s`."""

    def __init__(
        self,
        *,
        per_s: float,
        burst: int,
        max_clients: int = MAX_TRACKED_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not per_s > 0 or not math.isfinite(per_s):
            raise ValueError(f"rate limit {per_s!r}/s: give a positive number")
        if burst < 1:
            raise ValueError(f"rate limit burst {burst!r}: give at least 1")
        self.per_s = per_s
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str) -> float:
        """Take one request for `client`: 0.0 if allowed, else the seconds until it would be."""
        now = self._clock()
        tokens, then = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.per_s)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.per_s
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


class RateLimitMiddleware:
    """Answers 429 with `Retry-After` to a client address over its rate."""

    def __init__(self, app: ASGIApp, *, buckets: TokenBuckets) -> None:
        self.app = app
        self.buckets = buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        wait = self.buckets.take(address)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            detail = (
                f"too many requests from {address}: at most {self.buckets.per_s:g} per second "
                f"(bursts of {self.buckets.burst}); retry in {retry_after} s"
            )
            response = error_response(429, detail, headers={"Retry-After": str(retry_after)})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


# --- headers ----------------------------------------------------------------


def page_policy(html: str) -> str:
    """The Content-Security-Policy of a page: only its own origin, and the page's own inline
    scripts and styles, each by its SHA-256 (no inline code that the page did not ship)."""
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for tag, body in _INLINE_BLOCK.findall(html):
        digest = base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode()
        hashes[tag].append(f"'sha256-{digest}'")
    policy = CONTENT_SECURITY_POLICY
    for tag, sources in hashes.items():
        if sources:
            policy += f"; {tag}-src 'self' {' '.join(sources)}"
    return policy


class SecurityHeadersMiddleware:
    """Adds `SECURITY_HEADERS` to every response that does not set its own; the pages of
    `page_policies` (path: policy) get their own Content-Security-Policy."""

    def __init__(self, app: ASGIApp, *, page_policies: Mapping[str, str]) -> None:
        self.app = app
        self.page_policies = dict(page_policies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        page_policy = self.page_policies.get(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if page_policy is not None:
                    headers.setdefault("Content-Security-Policy", page_policy)
                for name, value in SECURITY_HEADERS:
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def check_origins(origins: Sequence[str]) -> list[str]:
    """CORS origins as browsers send them: `*`, or `scheme://host[:port]` and nothing more."""
    checked = []
    for origin in origins:
        parts = urlsplit(origin)
        is_origin = (
            parts.scheme in ("http", "https")
            and bool(parts.hostname)
            and not parts.path
            and not parts.query
            and not parts.fragment
            and not parts.username
        )
        if origin != "*" and not is_origin:
            raise ValueError(
                f"CORS origin {origin!r}: give '*' or scheme://host[:port], "
                "e.g. https://ops.example.com"
            )
        checked.append(origin)
    return checked


def add_safety(
    app: FastAPI,
    *,
    api_token: str | None,
    cors_origins: Sequence[str],
    rate_limit_per_s: float | None,
    rate_limit_burst: int,
) -> None:
    """The token (None: none needed), CORS, the rate limit (None: none) and the headers.

    Outermost first: security headers, CORS (so errors carry CORS headers too and a browser
    can read them), the rate limit, then the app.
    """
    if api_token is not None and not api_token.strip():
        raise ValueError("the API token is empty: give a token or none")
    app.state.api_token = api_token.encode("utf-8") if api_token is not None else None
    if rate_limit_per_s is not None:
        buckets = TokenBuckets(per_s=rate_limit_per_s, burst=rate_limit_burst)
        app.add_middleware(RateLimitMiddleware, buckets=buckets)
    origins = check_origins(cors_origins)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET"],
            allow_headers=["Authorization"],
            max_age=CORS_MAX_AGE_S,
        )
    # The dashboard page (rendered before this is called) may carry inline code of its own.
    dashboard_html: str = app.state.dashboard_html
    app.add_middleware(SecurityHeadersMiddleware, page_policies={"/": page_policy(dashboard_html)})
