"""A crawl's pages as `http.warm` tasks (args as the crawl contract has them), and its job."""

import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from jobstream.events import TaskSpec

WARM_KIND = "http.warm"
URLS_LABEL = "urls"
DEFAULT_RATE = 2.0
DEFAULT_CONCURRENCY = 2
DEFAULT_TIMEOUT_S = 15.0
# RFC 9110 token: what a header's name may be made of.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
MAX_HEADERS = 50


def default_user_agent() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("jobstream")
    except PackageNotFoundError:
        ours = "0"
    return f"jobstream-warm/{ours} (+https://github.com/jobstream)"


def parse_header(text: str) -> tuple[str, str]:
    """'Name: value' as (name, value); `ValueError` saying what is wrong."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not _HEADER_NAME.match(name):
        raise ValueError(f"--header {text[:100]!r} is not 'Name: value'")
    if any(char in value for char in "\r\n\x00"):
        raise ValueError(f"--header {name}: the value holds a line break or NUL")
    return name, value


def check_text_setting(value: str, flag: str) -> str:
    if not value.strip() or any(char in value for char in "\r\n\x00"):
        raise ValueError(f"{flag} must be one line of text")
    return value.strip()


@dataclass(frozen=True, kw_only=True)
class WarmSettings:
    """What each page's task carries besides its URL."""

    rate: float = DEFAULT_RATE
    concurrency: int = DEFAULT_CONCURRENCY
    timeout_s: float = DEFAULT_TIMEOUT_S
    headers: dict[str, str] = field(default_factory=dict)
    user_agent: str = field(default_factory=default_user_agent)
    # The kind's own attempt limit, where the worker's registry gives one.
    max_attempts: int | None = None

    def args(self, url: str, pass_number: int, crawl_delay_s: float | None) -> dict[str, Any]:
        return {
            "url": url,
            "pass": pass_number,
            "rate": self.rate,
            "concurrency": self.concurrency,
            "crawl_delay_s": crawl_delay_s,
            "timeout_s": self.timeout_s,
            "headers": self.headers,
            "user_agent": self.user_agent,
        }

    def spec(self, url: str, pass_number: int, crawl_delay_s: float | None) -> TaskSpec:
        return TaskSpec(
            kind=WARM_KIND,
            args=self.args(url, pass_number, crawl_delay_s),
            max_attempts=self.max_attempts,
        )


def crawl_labels(site: str, pass_number: int) -> dict[str, str]:
    return {"crawl": site, "pass": str(pass_number)}


async def next_pass(
    specs: AsyncIterator[TaskSpec], pass_number: int
) -> AsyncGenerator[TaskSpec, None]:
    """The tasks of the pass before, for pass `pass_number`."""
    async for spec in specs:
        yield msgspec.structs.replace(spec, args={**spec.args, "pass": pass_number})
