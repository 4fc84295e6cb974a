"""Worker processes of the two original designs, for the bench's baselines.

`python -m jobstream.bench._baseline_worker http|skip-locked …` sets up its connections, prints
`ready`, waits for a line on stdin, then runs `--concurrency` loops that claim and complete
jobs until none is left, and prints `{"done": n, "cpu_s": its CPU seconds}`.
"""

import argparse
import asyncio
import json
import os
import resource
import sys
from typing import Any

import asyncpg
import httpx

from jobstream.bench._sql import baseline_query
from jobstream.cli._runtime import run
from jobstream.services.worker import HandlerRegistry, TaskContext

REQUEST_TIMEOUT_S = 30.0
_registry = HandlerRegistry.default()


async def _run_handler(kind: str, args: dict[str, Any], job_id: int, worker_id: str) -> Any:
    ctx = TaskContext(
        job_id=str(job_id), task_id=str(job_id), attempt=1, max_attempts=1, worker_id=worker_id
    )
    return await _registry.get(kind)(args, ctx)


async def _http_loop(client: httpx.AsyncClient, worker_id: str) -> int:
    """claim → start → run → complete, over HTTP keep-alive, until the queue is empty."""
    done = 0
    while True:
        claimed = await client.post("/claim", json={"worker_id": worker_id})
        claimed.raise_for_status()
        if claimed.status_code == 204:
            return done
        job = claimed.json()
        (await client.post(f"/jobs/{job['id']}/start")).raise_for_status()
        result = await _run_handler(job["kind"], job["args"], job["id"], worker_id)
        completed = await client.post(f"/jobs/{job['id']}/complete", json={"result": result})
        completed.raise_for_status()
        done += 1


async def _skip_locked_loop(pool: asyncpg.Pool, worker_id: str, batch: int) -> int:
    """Claim up to `batch` jobs, run them and complete them, all in one transaction."""
    done = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(baseline_query("claim"), worker_id, batch, "running")
            if not rows:
                return done
            results = [
                json.dumps(
                    await _run_handler(row["kind"], json.loads(row["args"]), row["id"], worker_id)
                )
                for row in rows
            ]
            await conn.execute(
                baseline_query("complete_many"), [row["id"] for row in rows], results
            )
        done += len(rows)


async def _ready_then_go() -> None:
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)


async def _http_main(args: argparse.Namespace, worker_id: str) -> int:
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    async with httpx.AsyncClient(
        base_url=args.url, limits=limits, timeout=REQUEST_TIMEOUT_S
    ) as client:
        await asyncio.gather(*(client.get("/healthz") for _ in range(args.concurrency)))
        await _ready_then_go()
        counts = await asyncio.gather(
            *(_http_loop(client, f"{worker_id}-{i}") for i in range(args.concurrency))
        )
    return sum(counts)


async def _skip_locked_main(args: argparse.Namespace, worker_id: str) -> int:
    pool = await asyncpg.create_pool(
        args.url,
        min_size=args.concurrency,
        max_size=args.concurrency,
        server_settings={"search_path": args.schema},
    )
    try:
        await _ready_then_go()
        counts = await asyncio.gather(
            *(
                _skip_locked_loop(pool, f"{worker_id}-{i}", args.batch)
                for i in range(args.concurrency)
            )
        )
    finally:
        await pool.close()
    return sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description="A worker of an original design, for the bench.")
    parser.add_argument("design", choices=["http", "skip-locked"])
    parser.add_argument("--url", required=True, help="Control plane URL or PostgreSQL URL.")
    parser.add_argument("--schema", default="public")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    worker_id = f"baseline-{os.getpid()}"
    main_for = _http_main if args.design == "http" else _skip_locked_main
    done = run(main_for(args, worker_id))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"done": done, "cpu_s": usage.ru_utime + usage.ru_stime}), flush=True)


if __name__ == "__main__":
    main()
