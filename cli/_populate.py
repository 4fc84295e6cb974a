"""`jobstream populate N`: the original control plane's admin job population, N sample
`sum` jobs of small random numbers, each submitted as `jobstream submit` would."""

import json
import random

from jobstream.cli._submit import (
    SubmitPlan,
    no_worker_seen,
    plan_submission,
    prepare_bus,
    publish_planned,
)
from jobstream.events import Bus
from jobstream.services.worker import HandlerRegistry

SAMPLE_KIND = "sum"
SAMPLE_JOB_NAME = "populate"
SAMPLE_MAX = 100


def sample_plans(
    registry: HandlerRegistry, count: int, *, queue: str, rng: random.Random
) -> list[SubmitPlan]:
    """`count` jobs of one `sum` task each, `a` and `b` drawn from 0..SAMPLE_MAX."""
    return [
        plan_submission(
            registry,
            kind=SAMPLE_KIND,
            args=json.dumps({"a": rng.randint(0, SAMPLE_MAX), "b": rng.randint(0, SAMPLE_MAX)}),
            count=1,
            tasks_file=None,
            name=SAMPLE_JOB_NAME,
            queue=queue,
            max_attempts=None,
            timeout_s=None,
            chunk_size=1,
            idempotency_key=None,
        )
        for _ in range(count)
    ]


async def populate(bus: Bus, plans: list[SubmitPlan], *, queue: str) -> tuple[list[str], bool]:
    """Submit the jobs; their ids, and whether no worker is on `queue` to run them."""
    await prepare_bus(bus)
    job_ids = [(await publish_planned(bus, plan, show_progress=False)).job_id for plan in plans]
    return job_ids, await no_worker_seen(bus, queue)
