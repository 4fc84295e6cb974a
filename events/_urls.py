"""Server URLs as they may be shown: the one redaction of credentials, for NATS and
PostgreSQL alike."""

from urllib.parse import parse_qsl, urlencode

# A NATS URL's user part without a password is a token (`nats://TOKEN@host`).
_NATS_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})
_SECRET_PARAMS = frozenset({"password", "sslpassword", "token"})
HIDDEN = "***"


def redact_url(url: str) -> str:
    """`url` (or comma-separated URLs) with every password and token hidden; users stay."""
    return ",".join(_redact_one(part) for part in url.split(","))


def _redact_one(url: str) -> str:
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    user = None
    if "@" in rest:
        # The last '@': a password may hold one (unencoded), a host cannot.
        credentials, rest = rest.rsplit("@", 1)
        user, has_password, _ = credentials.partition(":")
        token = not has_password and scheme.lower() in _NATS_SCHEMES
        if token or any(char in user for char in "/?#"):
            user = HIDDEN
    rest, query = _split_query(rest)
    shown_user = f"{user}@" if user is not None else ""
    return f"{scheme}://{shown_user}{rest}{query}"


def _split_query(rest: str) -> tuple[str, str]:
    """The part before `?`, and the query with secret parameters hidden (`?...`, or '')."""
    if "?" not in rest:
        return rest, ""
    before, query = rest.split("?", 1)
    pairs = parse_qsl(query, keep_blank_values=True)
    shown = [(key, HIDDEN if key.lower() in _SECRET_PARAMS else value) for key, value in pairs]
    return before, "?" + urlencode(shown, safe="*")
