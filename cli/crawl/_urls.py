"""URLs of a crawl: checked, normalised, kept to one site, filtered by path, each kept once."""

import hashlib
import re
import sys
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO
from urllib.parse import SplitResult, urlsplit, urlunsplit

from jobstream.cli._settings import STDIN
from jobstream.cli.crawl._errors import DiscoveryError

MAX_URL_LENGTH = 2048
SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
# Bytes of a URL's hash kept to tell it was seen: a million URLs cost tens of MB, not the
# URLs themselves; two URLs sharing a hash (about 1 in 10^7 at a billion) lose one.
SEEN_HASH_BYTES = 8
_WHITESPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


def normalise_url(text: str) -> str:
    """`text` as one canonical http(s) URL (lower-case scheme and host, no default port, no
    fragment, `/` for an empty path); `ValueError` saying what is wrong with it."""
    text = text.strip()
    if not text:
        raise ValueError("empty URL")
    if len(text) > MAX_URL_LENGTH:
        raise ValueError(f"longer than {MAX_URL_LENGTH} characters")
    if _WHITESPACE_OR_CONTROL.search(text):
        raise ValueError("holds whitespace or control characters")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError("not an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("no host")
    port = parts.port  # ValueError for a port out of range or not a number
    netloc = parts.hostname.lower()
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if port is not None and port != DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    return urlunsplit(SplitResult(scheme, netloc, parts.path or "/", parts.query, ""))


def checked_url(text: str, *, what: str) -> str:
    """A URL the user gave, normalised; `DiscoveryError` (exit 2) naming it if unusable."""
    try:
        return normalise_url(text)
    except ValueError as exc:
        raise DiscoveryError(f"{what} {text.strip()[:200]!r} is not usable: {exc}") from None


def host_of(url: str) -> str:
    """`host[:port]` of a normalised URL: the politeness key, and the crawl's label."""
    return urlsplit(url).netloc


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def site_name(url: str) -> str:
    """What makes two URLs one site: the host name, whatever the scheme and port, `www.` or
    not (a site's sitemap may list its pages under https, or www, while it was asked for
    under http, or without)."""
    return (urlsplit(url).hostname or "").removeprefix("www.")


def same_site(url: str, site_url: str) -> bool:
    return site_name(url) == site_name(site_url)


class PathFilter:
    """--include / --exclude: shell-style patterns on a URL's path (`*` spans `/` too). A path
    is kept when it matches an include (or none are given) and no exclude."""

    def __init__(self, include: list[str], exclude: list[str]) -> None:
        for pattern in (*include, *exclude):
            if not pattern.startswith(("/", "*")):
                raise DiscoveryError(
                    f"path pattern {pattern!r} must start with / or * (it is matched against"
                    " the URL's path, e.g. '/blog/*')"
                )
        self.include = include
        self.exclude = exclude

    def keeps(self, url: str) -> bool:
        path = urlsplit(url).path or "/"
        if self.include and not any(fnmatchcase(path, p) for p in self.include):
            return False
        return not any(fnmatchcase(path, p) for p in self.exclude)


class SeenUrls:
    """The URLs kept so far, as short hashes."""

    def __init__(self) -> None:
        self._hashes: set[int] = set()

    def add(self, url: str) -> bool:
        """True if `url` is new."""
        digest = hashlib.blake2b(url.encode(), digest_size=SEEN_HASH_BYTES).digest()
        key = int.from_bytes(digest, "big")
        if key in self._hashes:
            return False
        self._hashes.add(key)
        return True

    def __len__(self) -> int:
        return len(self._hashes)


def open_urls(path: str) -> IO[bytes]:
    if path == STDIN:
        return sys.stdin.buffer
    try:
        return Path(path).open("rb")
    except OSError as exc:
        raise DiscoveryError(f"cannot read URLs file {path}: {exc.strerror or exc}") from None


def check_urls_file(path: str) -> None:
    """Every line of a URLs file checked before anything is fetched or sent (stdin cannot
    be read twice: its lines are checked as they come)."""
    with open_urls(path) as lines:
        for number, raw in enumerate(lines, start=1):
            text = raw.decode("utf-8", errors="replace").strip()
            if text and not text.startswith("#"):
                checked_url(text, what=f"{path}:{number}: URL")
