"""A response's cache status, in one vocabulary whatever the CDN, from its headers."""

from collections.abc import Mapping
from enum import StrEnum


class CacheStatus(StrEnum):
    HIT = "HIT"
    MISS = "MISS"
    EXPIRED = "EXPIRED"
    STALE = "STALE"
    BYPASS = "BYPASS"
    DYNAMIC = "DYNAMIC"
    REVALIDATED = "REVALIDATED"
    UPDATING = "UPDATING"
    UNKNOWN = "unknown"


# Answers that leave the cache cold: a warming pass follows them.
COLD = frozenset({CacheStatus.MISS, CacheStatus.EXPIRED})

_WORDS: dict[str, CacheStatus] = {
    **{status.value: status for status in CacheStatus if status is not CacheStatus.UNKNOWN},
    # Vercel: a page built at deploy time, served from the cache.
    "PRERENDER": CacheStatus.HIT,
    # CloudFront: stale, checked with the origin, still good.
    "REFRESHHIT": CacheStatus.REVALIDATED,
    # Varnish and Fastly: not cacheable, passed to the origin.
    "PASS": CacheStatus.BYPASS,
    # Akamai (X-Cache / X-Cache-Remote), as its TCP_* codes.
    "TCP_HIT": CacheStatus.HIT,
    "TCP_MEM_HIT": CacheStatus.HIT,
    "TCP_IMS_HIT": CacheStatus.HIT,
    "TCP_NEGATIVE_HIT": CacheStatus.HIT,
    "TCP_MISS": CacheStatus.MISS,
    "TCP_REFRESH_HIT": CacheStatus.REVALIDATED,
    "TCP_REFRESH_MISS": CacheStatus.EXPIRED,
    "TCP_REFRESH_FAIL_HIT": CacheStatus.STALE,
    "TCP_COOKIE_DENY": CacheStatus.BYPASS,
}


def _word(text: str) -> CacheStatus:
    """`Hit from cloudfront` → HIT, `TCP_MISS from a1.akamai` → MISS, `HIT: 3` → HIT."""
    first = text.strip().split(" ", 1)[0].rstrip(":").upper()
    return _WORDS.get(first, CacheStatus.UNKNOWN)


def _last_of_list(text: str) -> CacheStatus:
    """Fastly's `X-Cache: MISS, HIT` lists the shield first and the edge that answered the
    client last: the edge's word is the status."""
    return _word(text.rsplit(",", 1)[-1])


def _rfc9211(text: str) -> CacheStatus:
    """RFC 9211 `Cache-Status`: the last member is the cache nearest the client, e.g.
    `Origin; fwd=miss, CDN; hit` → HIT, `CDN; fwd=stale; fwd-status=304` → REVALIDATED."""
    member = text.rsplit(",", 1)[-1]
    params: dict[str, str] = {}
    for part in member.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        params[name.strip().lower()] = value.strip().strip('"').lower()
    if "hit" in params:
        ttl = params.get("ttl", "")
        return CacheStatus.STALE if ttl.lstrip("-").isdigit() and int(ttl) < 0 else CacheStatus.HIT
    forward = params.get("fwd")
    if forward in ("uri-miss", "vary-miss", "miss", "partial"):
        return CacheStatus.MISS
    if forward == "stale":
        return CacheStatus.REVALIDATED if params.get("fwd-status") == "304" else CacheStatus.EXPIRED
    if forward in ("bypass", "method", "request"):
        return CacheStatus.BYPASS
    return CacheStatus.UNKNOWN


def _varnish_ids(text: str) -> CacheStatus:
    """`X-Varnish: 32770 98315`: the ids of this request and of the one that filled the cache;
    one id alone is a miss."""
    ids = text.split()
    if not ids or not all(part.isdigit() for part in ids):
        return CacheStatus.UNKNOWN
    return CacheStatus.HIT if len(ids) >= 2 else CacheStatus.MISS


def _age(text: str) -> CacheStatus:
    """An `Age` is only sent by a cache: above 0 the response was stored before; 0 is one
    fetched from the origin just now."""
    value = text.strip()
    if not value.isdigit():
        return CacheStatus.UNKNOWN
    return CacheStatus.HIT if int(value) > 0 else CacheStatus.MISS


# The most specific first; the first header present with a known word decides.
_READERS = (
    ("cf-cache-status", _word),
    ("x-vercel-cache", _word),
    ("cache-status", _rfc9211),
    ("x-cache", _last_of_list),
    ("x-cache-remote", _last_of_list),
    ("x-varnish", _varnish_ids),
    ("age", _age),
)


def cache_status(headers: Mapping[str, str]) -> tuple[CacheStatus, str | None]:
    """The normalised status and the header it came from (`"cf-cache-status: MISS"`);
    (unknown, None) when no header tells. `headers` must look names up case-insensitively
    (as `httpx.Headers` does)."""
    for name, read in _READERS:
        value = headers.get(name)
        if value is None:
            continue
        status = read(value)
        if status is not CacheStatus.UNKNOWN:
            return status, f"{name}: {value}"
    return CacheStatus.UNKNOWN, None
