"""Baseline (a): the original control plane — a FastAPI app whose workers claim, start and
complete jobs over HTTP, each call one Postgres transaction through an asyncpg pool.

Run as its own process: `python -m jobstream.bench._control_plane --database-url … --port …`.
"""

import argparse
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import uvicorn
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel

from jobstream.bench._sql import baseline_query


class ClaimRequest(BaseModel):
    worker_id: str


class CompleteRequest(BaseModel):
    result: Any = None


def create_app(database_url: str, *, schema: str, pool_size: int) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(
            database_url,
            min_size=pool_size,
            max_size=pool_size,
            server_settings={"search_path": schema},
        )
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/claim", response_model=None)
    async def claim(body: ClaimRequest, request: Request) -> dict[str, Any] | Response:
        pool: asyncpg.Pool = request.app.state.pool
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(baseline_query("claim"), body.worker_id, 1, "claimed")
        if row is None:
            return Response(status_code=204)
        return {"id": row["id"], "kind": row["kind"], "args": json.loads(row["args"])}

    @app.post("/jobs/{job_id}/start", status_code=204)
    async def start(job_id: int, request: Request) -> None:
        pool: asyncpg.Pool = request.app.state.pool
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(baseline_query("start"), job_id)

    @app.post("/jobs/{job_id}/complete", status_code=204)
    async def complete(job_id: int, body: CompleteRequest, request: Request) -> None:
        pool: asyncpg.Pool = request.app.state.pool
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(baseline_query("complete"), job_id, json.dumps(body.result))

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="The original control plane, for the bench.")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pool-size", type=int, default=20)
    args = parser.parse_args()
    app = create_app(args.database_url, schema=args.schema, pool_size=args.pool_size)
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, loop="auto"
    )


if __name__ == "__main__":
    main()
