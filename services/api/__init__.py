"""The read-only HTTP API over the read models, and the live dashboard at `/`.

Run it with uvicorn's factory mode, e.g. from the CLI::

    uvicorn.run(functools.partial(create_app, database_url=url), factory=True)
"""

from services.api._app import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_SCHEMA,
    MAX_PAGE_SIZE,
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
    TaskPage,
    Worker,
    WorkerList,
    create_app,
    dead_letters,
    job_summary,
    running_tasks,
)
from services.api._crawl_figures import CrawlReport
from services.api._errors import ErrorBody, FieldError
from services.api._liveness import LiveWork, live_work, read_liveness

__all__ = [
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
]
