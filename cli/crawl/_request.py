"""A crawl as the command line asks for it, checked before anything is fetched or sent."""

from dataclasses import dataclass
from typing import Literal

from jobstream.cli._idempotency import MAX_IDEMPOTENCY_KEY_LENGTH, check_idempotency_key
from jobstream.cli.crawl._tasks import (
    MAX_HEADERS,
    URLS_LABEL,
    WARM_KIND,
    WarmSettings,
    check_text_setting,
    default_user_agent,
    parse_header,
)
from jobstream.cli.crawl._urls import PathFilter, checked_url, host_of
from jobstream.events import JobstreamError

Source = Literal["site", "sitemap", "urls"]
MAX_PASSES = 10
PASS_KEY_SUFFIX = "/pass{n}"


@dataclass(frozen=True, kw_only=True)
class CrawlRequest:
    """A crawl as checked from the command line, before anything is fetched."""

    source: Source
    # The site's URL, the sitemap's, or the URLs file (`-`: stdin).
    target: str
    label: str
    paths: PathFilter
    max_urls: int | None
    passes: int
    wait: bool
    warm: WarmSettings
    queue: str
    priority: int
    idempotency_key: str | None

    def key_for(self, pass_number: int) -> str | None:
        if self.idempotency_key is None or pass_number == 1:
            return self.idempotency_key
        return self.idempotency_key + PASS_KEY_SUFFIX.format(n=pass_number)


def build_request(
    *,
    site: str | None,
    sitemap: str | None,
    urls_file: str | None,
    max_urls: int | None,
    include: list[str],
    exclude: list[str],
    passes: int,
    wait: bool,
    warm: WarmSettings,
    queue: str,
    priority: int,
    idempotency_key: str | None,
) -> CrawlRequest:
    sources: list[tuple[Source, str | None]] = [
        ("site", site),
        ("sitemap", sitemap),
        ("urls", urls_file),
    ]
    given = [(source, value) for source, value in sources if value]
    if len(given) != 1:
        raise JobstreamError("give one of: a site URL, --sitemap URL, --urls-file FILE")
    source, target = given[0][0], given[0][1] or ""
    if source == "site":
        target = checked_url(target, what="site")
    elif source == "sitemap":
        target = checked_url(target, what="--sitemap")
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
        room = MAX_IDEMPOTENCY_KEY_LENGTH - len(PASS_KEY_SUFFIX.format(n=MAX_PASSES))
        if len(idempotency_key) > room:
            raise JobstreamError(f"--idempotency-key of a crawl must be at most {room} characters")
    return CrawlRequest(
        source=source,
        target=target,
        label=URLS_LABEL if source == "urls" else host_of(target),
        paths=PathFilter(include, exclude),
        max_urls=max_urls,
        passes=passes,
        wait=wait,
        warm=warm,
        queue=queue,
        priority=priority,
        idempotency_key=idempotency_key,
    )


def warm_settings(
    concurrency: int, rate: float, headers: list[str], timeout_s: float, user_agent: str | None
) -> WarmSettings:
    from jobstream.services.worker import HandlerRegistry

    if len(headers) > MAX_HEADERS:
        raise JobstreamError(f"at most {MAX_HEADERS} --header options")
    try:
        parsed = dict(parse_header(text) for text in headers)
        agent = check_text_setting(user_agent, "--user-agent") if user_agent else None
    except ValueError as exc:
        raise JobstreamError(str(exc)) from None
    return WarmSettings(
        rate=rate,
        concurrency=concurrency,
        timeout_s=timeout_s,
        headers=parsed,
        user_agent=agent or default_user_agent(),
        max_attempts=HandlerRegistry.default().default_max_attempts(WARM_KIND),
    )
