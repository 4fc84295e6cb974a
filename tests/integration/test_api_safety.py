"""The API's safety layer against a real PostgreSQL (and nats-server for the live stream):
the bearer token, CORS, the per-client-IP rate limit and the security headers."""

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from jobstream.services.api import create_app
from jobstream.services.api._safety import CONTENT_SECURITY_POLICY
from tests._serving import serving

TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
ORIGIN = "https://ops.example.com"
# The JSON routes of the app (with the token and an empty database and no NATS, each answers
# 200, 404, or 503 for those that read the event log).
GUARDED = [
    "/queues",
    "/metrics",
    "/jobs/j1/events",
    "/jobs",
    "/jobs/j1",
    "/jobs/j1/tasks",
    "/jobs/j1/crawl",
    "/tasks/t1",
    "/workers",
    "/workers/w1",
    "/results",
    "/stats",
    "/dead-letters",
    "/openapi.json",
]


def client_of(app: FastAPI, address: str = "127.0.0.1") -> httpx.AsyncClient:
    """A client of `app` calling from `address` (the lifespan runs apart: `serve`)."""
    transport = httpx.ASGITransport(app=app, client=(address, 40_000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app), client_of(app) as client:
        yield client


@pytest.fixture
async def guarded(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(database_url=database_url, api_token=TOKEN)) as client:
        yield client


# --- the token ------------------------------------------------------------------------


@pytest.mark.parametrize("path", GUARDED)
async def test_every_json_route_needs_the_token(guarded: httpx.AsyncClient, path: str) -> None:
    missing = await guarded.get(path)
    assert missing.status_code == 401, missing.text
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="jobstream"'
    assert "Authorization: Bearer <token>" in missing.json()["detail"]

    wrong = await guarded.get(path, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    assert wrong.json()["detail"] == "the bearer token is not this API's token"

    basic = await guarded.get(path, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401
    in_query = await guarded.get(path, params={"token": TOKEN})  # only the live stream's way
    assert in_query.status_code == 401

    right = await guarded.get(path, headers=BEARER)
    assert right.status_code in (200, 404, 503), right.text


async def test_probes_and_the_page_need_no_token(guarded: httpx.AsyncClient) -> None:
    assert (await guarded.get("/healthz")).status_code == 200
    assert (await guarded.get("/readyz")).status_code in (200, 503)  # no NATS here: 503
    page = await guarded.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


async def test_no_token_set_means_none_needed(database_url: str) -> None:
    async with serve(create_app(database_url=database_url)) as client:
        assert (await client.get("/jobs")).status_code == 200
        spec = (await client.get("/openapi.json")).json()
    assert "securitySchemes" not in spec.get("components", {})
    assert "401" not in spec["paths"]["/jobs"]["get"]["responses"]


async def test_the_document_says_which_routes_need_the_token(guarded: httpx.AsyncClient) -> None:
    spec = (await guarded.get("/openapi.json", headers=BEARER)).json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, methods in spec["paths"].items():
        operation = methods["get"]
        if path in ("/healthz", "/readyz"):
            assert "security" not in operation and "401" not in operation["responses"]
        else:
            assert operation["security"] == [{"bearer": []}], path
            assert "401" in operation["responses"], path


async def test_live_stream_takes_the_token_in_its_query(nats_url: str, database_url: str) -> None:
    app = create_app(database_url=database_url, nats_urls=[nats_url], api_token=TOKEN)
    async with serving(app) as client:
        assert (await client.get("/events/stream")).status_code == 401
        refused = await client.get("/events/stream", params={"token": "nope"})
        assert refused.status_code == 401
        for _ in range(100):  # the API's NATS connection opens in the background
            async with client.stream("GET", "/events/stream", params={"token": TOKEN}) as live:
                if live.status_code == 200:
                    first = await anext(live.aiter_lines())
                    break
            await asyncio.sleep(0.05)
        assert first == ": connected"
        async with client.stream("GET", "/events/stream", headers=BEARER) as live:
            assert live.status_code == 200


@pytest.mark.parametrize("token", ["", "   "])
async def test_an_empty_token_is_refused(database_url: str, token: str) -> None:
    with pytest.raises(ValueError, match="token is empty"):
        create_app(database_url=database_url, api_token=token)


# --- CORS -----------------------------------------------------------------------------


async def test_cors_for_the_origins_given(database_url: str) -> None:
    app = create_app(database_url=database_url, api_token=TOKEN, cors_origins=[ORIGIN])
    async with serve(app) as client:
        preflight = await client.options(
            "/jobs",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200  # answered before the token is asked for
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        assert preflight.headers["access-control-allow-methods"] == "GET"

        allowed = await client.get("/jobs", headers={**BEARER, "Origin": ORIGIN})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        # A refusal carries them too, so the page can read why.
        refused = await client.get("/jobs", headers={"Origin": ORIGIN})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == ORIGIN

        other = await client.get("/jobs", headers={**BEARER, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        bad_preflight = await client.options(
            "/jobs",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert bad_preflight.status_code == 400


async def test_no_cors_headers_without_origins(guarded: httpx.AsyncClient) -> None:
    response = await guarded.get("/jobs", headers={**BEARER, "Origin": ORIGIN})
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(
    "origin", ["ops.example.com", "https://ops.example.com/", "ftp://x", "https://a/b", ""]
)
async def test_bad_cors_origins_are_refused(database_url: str, origin: str) -> None:
    with pytest.raises(ValueError, match="CORS origin"):
        create_app(database_url=database_url, cors_origins=[origin])


# --- the rate limit -------------------------------------------------------------------


async def test_rate_limit_per_client_address(database_url: str) -> None:
    app = create_app(database_url=database_url, rate_limit_per_s=0.5, rate_limit_burst=3)
    async with (
        app.router.lifespan_context(app),
        client_of(app, "10.0.0.1") as first,
        client_of(app, "10.0.0.2") as second,
    ):
        for _ in range(3):
            assert (await first.get("/healthz")).status_code == 200
        over = await first.get("/jobs")
        assert over.status_code == 429
        assert over.headers["Retry-After"] == "2"  # one request per 2 s
        assert over.json()["detail"] == (
            "too many requests from 10.0.0.1: at most 0.5 per second (bursts of 3); retry in 2 s"
        )
        assert over.headers["X-Content-Type-Options"] == "nosniff"
        assert (await second.get("/jobs")).status_code == 200  # another address: its own


async def test_rate_limit_refills(database_url: str) -> None:
    app = create_app(database_url=database_url, rate_limit_per_s=1, rate_limit_burst=1)
    async with serve(app) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/healthz")).status_code == 429
        await asyncio.sleep(1.05)
        assert (await client.get("/healthz")).status_code == 200


async def test_no_rate_limit_when_none(database_url: str) -> None:
    app = create_app(database_url=database_url, rate_limit_per_s=None)
    async with serve(app) as client:
        statuses = {(await client.get("/healthz")).status_code for _ in range(300)}
    assert statuses == {200}


@pytest.mark.parametrize(("per_s", "burst"), [(0.0, 10), (-1.0, 10), (float("nan"), 10), (1, 0)])
async def test_bad_rate_limits_are_refused(database_url: str, per_s: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        create_app(database_url=database_url, rate_limit_per_s=per_s, rate_limit_burst=burst)


# --- headers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/", {}, 200),
        ("/healthz", {}, 200),
        ("/jobs", BEARER, 200),
        ("/jobs", {}, 401),
        ("/jobs/nope", BEARER, 404),
        ("/jobs", {**BEARER, "X": "1"}, 200),
        ("/stats?window_s=0", BEARER, 422),
        ("/no/such/route", BEARER, 404),
    ],
)
async def test_security_headers_on_every_answer(
    guarded: httpx.AsyncClient, path: str, headers: dict[str, str], status: int
) -> None:
    response = await guarded.get(path, headers=headers)
    assert response.status_code == status
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"


async def test_the_page_may_run_its_own_inline_code_only(guarded: httpx.AsyncClient) -> None:
    page = await guarded.get("/")
    policy = page.headers["Content-Security-Policy"]
    assert policy.startswith("default-src 'self'")
    blocks = re.findall(r"<(script|style)>(.*?)</\1>", page.text, re.DOTALL)
    for tag, body in blocks:
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"{tag}-src 'self'" in policy and f"'sha256-{digest}'" in policy
    assert "unsafe-inline" not in policy
    other = await guarded.get("/healthz")
    assert other.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


async def test_the_api_command_takes_its_token_from_the_environment(
    nats_url: str, database_url: str
) -> None:
    """`jobstream api` as an operator starts it: JOBSTREAM_API_TOKEN guards the JSON routes,
    the health probe stays open."""
    import os
    import sys

    from jobstream.services.stack import free_port

    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "jobstream.cli", "api", "--port", str(port)],
        *["--nats-url", nats_url, "--database-url", database_url],
        env={**os.environ, "JOBSTREAM_API_TOKEN": TOKEN},
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
            for _ in range(300):
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.returncode is None, "jobstream api exited"
                await asyncio.sleep(0.1)
            assert (await client.get("/jobs")).status_code == 401
            assert (await client.get("/jobs", headers=BEARER)).status_code == 200
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
