"""The read-only HTTP API over the read models, and the live dashboard at `/`.

Run it with uvicorn's factory mode, e.g. from the CLI::

    uvicorn.run(functools.partial(create_app, database_url=url), factory=True)
"""

from jobstream.services.api._app import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_SCHEMA,
    MAX_PAGE_SIZE,
    Attempt,
    BadQueryValueError,
    DatabaseUnavailableError,
    Health,
    Job,
    JobPage,
    ReadModelsMissingError,
    Result,
    ResultPage,
    Task,
    TaskCounts,
    TaskDetail,
    TaskPage,
    Worker,
    WorkerDetail,
    WorkerList,
    create_app,
    dead_letters,
    init_connection,
    job_summary,
    jobs_page,
    running_tasks,
    task_detail,
    tasks_page,
    workers_list,
)
from jobstream.services.api._crawl_figures import CrawlReport
from jobstream.services.api._dead_letters import DeadLetter, DeadLetterPage
from jobstream.services.api._errors import ErrorBody, FieldError
from jobstream.services.api._liveness import LiveWork, live_work, read_liveness
from jobstream.services.api._queues import LevelDepth, QueueDepth, QueueList
from jobstream.services.api._safety import DEFAULT_RATE_LIMIT_BURST, DEFAULT_RATE_LIMIT_PER_S
from jobstream.services.api._stats import (
    Durations,
    ProjectorLag,
    QueueKindStats,
    Stats,
    StatsBucket,
)

__all__ = [
    "Attempt",
    "TaskDetail",
    "init_connection",
    "jobs_page",
    "task_detail",
    "tasks_page",
    "workers_list",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_SCHEMA",
    "MAX_PAGE_SIZE",
    "BadQueryValueError",
    "CrawlReport",
    "DatabaseUnavailableError",
    "ErrorBody",
    "FieldError",
    "Health",
    "Job",
    "JobPage",
    "ReadModelsMissingError",
    "Result",
    "ResultPage",
    "Task",
    "TaskCounts",
    "TaskPage",
    "Worker",
    "WorkerList",
    "create_app",
    "dead_letters",
    "job_summary",
    "LiveWork",
    "live_work",
    "read_liveness",
    "running_tasks",
    "DEFAULT_RATE_LIMIT_BURST",
    "DEFAULT_RATE_LIMIT_PER_S",
    "DeadLetter",
    "DeadLetterPage",
    "Durations",
    "LevelDepth",
    "ProjectorLag",
    "QueueDepth",
    "QueueKindStats",
    "QueueList",
    "Stats",
    "StatsBucket",
    "WorkerDetail",
]
