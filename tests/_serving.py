"""An app served by uvicorn on 127.0.0.1 at a free port, for the tests that talk HTTP to it."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import uvicorn
from fastapi import FastAPI

from jobstream.services.stack import free_port

START_ATTEMPTS = 100
START_POLL_S = 0.05
# The API closes NATS (drain: up to 5 s) and its pool (up to 10 s) on the way out.
STOP_TIMEOUT_S = 30.0


@contextlib.asynccontextmanager
async def serving(app: FastAPI, *, timeout_s: float = 30) -> AsyncIterator[httpx.AsyncClient]:
    """Serve `app` until the block ends; yield a client of it, once `/healthz` answers."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as client:
            for _ in range(START_ATTEMPTS):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(START_POLL_S)
            yield client
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, STOP_TIMEOUT_S)
