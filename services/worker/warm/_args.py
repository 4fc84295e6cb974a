"""The arguments of an `http.warm` task, checked: any mistake is a permanent failure with a
message that names the argument."""

import re
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec

from jobstream.services.worker._handlers import PermanentError

MAX_URL_CHARS = 2048
MAX_HEADERS = 64
MAX_HEADER_CHARS = 8192
MAX_RATE = 10_000.0
MAX_CONCURRENCY = 1_000
MAX_TIMEOUT_S = 600.0
MAX_WARM_CHECKS = 20
# RFC 9110 token characters: what a header name may be made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _package_version() -> str:
    try:
        return version("jobstream")
    except PackageNotFoundError:
        return "0+unknown"


DEFAULT_USER_AGENT = f"jobstream-warm/{_package_version()} (+https://github.com/jobstream)"

Positive = Annotated[float, msgspec.Meta(gt=0)]


class WarmArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    url: Annotated[str, msgspec.Meta(min_length=1)]
    pass_: Annotated[int, msgspec.Meta(ge=1, le=1_000)] = msgspec.field(default=1, name="pass")
    rate: Annotated[float, msgspec.Meta(gt=0, le=MAX_RATE)] = 2.0
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=MAX_CONCURRENCY)] = 2
    crawl_delay_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)] | None = None
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT_S)] = 15.0
    headers: Annotated[dict[str, str], msgspec.Meta(max_length=MAX_HEADERS)] = msgspec.field(
        default_factory=dict
    )
    user_agent: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)] = DEFAULT_USER_AGENT
    warm: bool = True
    warm_checks: Annotated[int, msgspec.Meta(ge=0, le=MAX_WARM_CHECKS)] = 3

    @property
    def requests_per_s(self) -> float:
        """The rate, no faster than robots.txt's Crawl-delay allows."""
        if self.crawl_delay_s:
            return min(self.rate, 1.0 / self.crawl_delay_s)
        return self.rate


def parse_args(args: Mapping[str, Any]) -> tuple[WarmArgs, str]:
    """The checked arguments and the URL's domain (`host[:port]`, lower-case)."""
    try:
        warm = msgspec.convert(dict(args), WarmArgs)
    except msgspec.ValidationError as exc:
        raise PermanentError(f"http.warm: bad arguments: {exc}") from None
    domain = _check_url(warm.url)
    _check_headers({**warm.headers, "user-agent": warm.user_agent})
    return warm, domain


def _check_url(url: str) -> str:
    if len(url) > MAX_URL_CHARS:
        raise PermanentError(f"http.warm: url is {len(url)} characters, over {MAX_URL_CHARS}")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise PermanentError(f"http.warm: url {url[:100]!r} holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise PermanentError(f"http.warm: url {url[:100]!r} is malformed: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise PermanentError(f"http.warm: url {url[:100]!r} is not http or https")
    host = parts.hostname
    if not host:
        raise PermanentError(f"http.warm: url {url[:100]!r} has no host")
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


def _check_headers(headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise PermanentError(f"http.warm: header name {name[:100]!r} is not a valid token")
        if len(value) > MAX_HEADER_CHARS or any(ch in value for ch in "\r\n\0"):
            raise PermanentError(
                f"http.warm: header {name!r} has a value that is too long or holds CR, LF or NUL"
            )
