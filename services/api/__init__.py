"""The read-only HTTP API over the read models, and the live dashboard at `/`.

Run it with uvicorn's factory mode, e.g. from the CLI::

    uvicorn.run(functools.partial(create_app, database_url=url), factory=True)
"""

from typing import TYPE_CHECKING

from jobstream.events import lazy_attribute

if TYPE_CHECKING:
    from jobstream.services.api._app import (
        DEFAULT_SCHEMA,
        BadQueryValueError,
        DatabaseUnavailableError,
        ReadModelsMissingError,
        create_app,
    )
    from jobstream.services.api._crawl_figures import (
        CrawlReport,
    )
    from jobstream.services.api._dead_letters import (
        DeadLetter,
        DeadLetterPage,
    )
    from jobstream.services.api._errors import (
        ErrorBody,
        FieldError,
    )
    from jobstream.services.api._liveness import (
        LiveWork,
        live_work,
        read_liveness,
    )
    from jobstream.services.api._queues import (
        LevelDepth,
        QueueDepth,
        QueueList,
    )
    from jobstream.services.api._reads import (
        DEFAULT_PAGE_SIZE,
        MAX_PAGE_SIZE,
        Attempt,
        Health,
        Job,
        JobPage,
        Result,
        ResultPage,
        Task,
        TaskCounts,
        TaskDetail,
        TaskPage,
        Worker,
        WorkerDetail,
        WorkerList,
        dead_letters,
        init_connection,
        job_summary,
        jobs_page,
        running_tasks,
        task_detail,
        tasks_page,
        workers_list,
    )
    from jobstream.services.api._safety import (
        DEFAULT_RATE_LIMIT_BURST,
        DEFAULT_RATE_LIMIT_PER_S,
    )
    from jobstream.services.api._stats import (
        Durations,
        ProjectorLag,
        QueueKindStats,
        Stats,
        StatsBucket,
    )

# Each public name and the module that defines it, loaded on first use (PEP 562): the CLI's
# read commands take the reads (`_reads`) without loading FastAPI (`_app`).
_HOMES = {
    "BadQueryValueError": "jobstream.services.api._app",
    "DEFAULT_SCHEMA": "jobstream.services.api._app",
    "DatabaseUnavailableError": "jobstream.services.api._app",
    "ReadModelsMissingError": "jobstream.services.api._app",
    "create_app": "jobstream.services.api._app",
    "CrawlReport": "jobstream.services.api._crawl_figures",
    "DeadLetter": "jobstream.services.api._dead_letters",
    "DeadLetterPage": "jobstream.services.api._dead_letters",
    "ErrorBody": "jobstream.services.api._errors",
    "FieldError": "jobstream.services.api._errors",
    "LiveWork": "jobstream.services.api._liveness",
    "live_work": "jobstream.services.api._liveness",
    "read_liveness": "jobstream.services.api._liveness",
    "LevelDepth": "jobstream.services.api._queues",
    "QueueDepth": "jobstream.services.api._queues",
    "QueueList": "jobstream.services.api._queues",
    "Attempt": "jobstream.services.api._reads",
    "DEFAULT_PAGE_SIZE": "jobstream.services.api._reads",
    "Health": "jobstream.services.api._reads",
    "Job": "jobstream.services.api._reads",
    "JobPage": "jobstream.services.api._reads",
    "MAX_PAGE_SIZE": "jobstream.services.api._reads",
    "Result": "jobstream.services.api._reads",
    "ResultPage": "jobstream.services.api._reads",
    "Task": "jobstream.services.api._reads",
    "TaskCounts": "jobstream.services.api._reads",
    "TaskDetail": "jobstream.services.api._reads",
    "TaskPage": "jobstream.services.api._reads",
    "Worker": "jobstream.services.api._reads",
    "WorkerDetail": "jobstream.services.api._reads",
    "WorkerList": "jobstream.services.api._reads",
    "dead_letters": "jobstream.services.api._reads",
    "init_connection": "jobstream.services.api._reads",
    "job_summary": "jobstream.services.api._reads",
    "jobs_page": "jobstream.services.api._reads",
    "running_tasks": "jobstream.services.api._reads",
    "task_detail": "jobstream.services.api._reads",
    "tasks_page": "jobstream.services.api._reads",
    "workers_list": "jobstream.services.api._reads",
    "DEFAULT_RATE_LIMIT_BURST": "jobstream.services.api._safety",
    "DEFAULT_RATE_LIMIT_PER_S": "jobstream.services.api._safety",
    "Durations": "jobstream.services.api._stats",
    "ProjectorLag": "jobstream.services.api._stats",
    "QueueKindStats": "jobstream.services.api._stats",
    "Stats": "jobstream.services.api._stats",
    "StatsBucket": "jobstream.services.api._stats",
}

__getattr__ = lazy_attribute(__name__, _HOMES, globals())

__all__ = [
    "Attempt",
    "BadQueryValueError",
    "CrawlReport",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_RATE_LIMIT_BURST",
    "DEFAULT_RATE_LIMIT_PER_S",
    "DEFAULT_SCHEMA",
    "DatabaseUnavailableError",
    "DeadLetter",
    "DeadLetterPage",
    "Durations",
    "ErrorBody",
    "FieldError",
    "Health",
    "Job",
    "JobPage",
    "LevelDepth",
    "LiveWork",
    "MAX_PAGE_SIZE",
    "ProjectorLag",
    "QueueDepth",
    "QueueKindStats",
    "QueueList",
    "ReadModelsMissingError",
    "Result",
    "ResultPage",
    "Stats",
    "StatsBucket",
    "Task",
    "TaskCounts",
    "TaskDetail",
    "TaskPage",
    "Worker",
    "WorkerDetail",
    "WorkerList",
    "create_app",
    "dead_letters",
    "init_connection",
    "job_summary",
    "jobs_page",
    "live_work",
    "read_liveness",
    "running_tasks",
    "task_detail",
    "tasks_page",
    "workers_list",
]
