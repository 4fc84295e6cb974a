"""A task kind's own attempt limit applies where the job sets none."""

from collections.abc import Mapping
from typing import Any

import pytest

from jobstream.cli._submit import with_kind_defaults
from jobstream.events import JobSubmitted, TaskSpec, expand_tasks
from jobstream.services.worker import HandlerRegistry, TaskContext, task_kind


@task_kind(max_attempts=7)
async def patient(args: Mapping[str, Any], ctx: TaskContext) -> None:
    return None


def test_kind_default_fills_in_and_the_job_limit_covers_the_rest() -> None:
    registry = HandlerRegistry.default()
    registry.add("patient", patient)
    assert registry.default_max_attempts("patient") == 7
    assert registry.default_max_attempts("sum") is None
    specs = with_kind_defaults([TaskSpec(kind="patient"), TaskSpec(kind="sum")], registry)
    job = JobSubmitted(job_id="J", tasks=specs, max_attempts=3)
    assert [m.max_attempts for m in expand_tasks(job)] == [7, 3]


def test_task_kind_rejects_a_limit_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        task_kind(max_attempts=0)
