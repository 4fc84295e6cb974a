"""A job's tasks as the read model's task rows: TaskSpecs, each with the index of its first
task (`_rules.TaskRange`)."""

from collections.abc import Iterable, Iterator, Sequence

from jobstream.events import MAX_TASKS_PER_JOB, TaskSpec


def over_the_task_limit(job_id: str, first_index: int, specs: Sequence[TaskSpec]) -> str | None:
    """Why `specs`, taking task indexes from `first_index` on, cannot be projected (None: they
    can): a job's task indexes stay below `MAX_TASKS_PER_JOB`, the dispatcher's own limit."""
    end = first_index + sum(spec.count for spec in specs)
    if end <= MAX_TASKS_PER_JOB:
        return None
    return (
        f"job {job_id}: tasks up to index {end - 1:,}, over the limit of"
        f" {MAX_TASKS_PER_JOB:,} tasks per job"
    )


def spec_ranges(first_index: int, specs: Iterable[TaskSpec]) -> Iterator[tuple[TaskSpec, int]]:
    """Each spec with the task index of its first task: a spec of `count` n takes n
    consecutive indexes (as in `events.TaskExpander`), from `first_index` on."""
    index = first_index
    for spec in specs:
        yield spec, index
        index += spec.count
