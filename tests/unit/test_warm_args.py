"""Hostile `http.warm` arguments: a permanent failure that names the argument."""

from typing import Any

import pytest

from jobstream.services.worker import PermanentError
from jobstream.services.worker.warm._args import parse_args


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "missing required field `url`"),
        ({"url": 42}, "Expected `str`, got `int` - at `$.url`"),
        ({"url": "ftp://example.com/a"}, "is not http or https"),
        ({"url": "javascript:alert(1)"}, "is not http or https"),
        ({"url": "http:///nohost"}, "has no host"),
        ({"url": "http://example.com:99999/"}, "is malformed"),
        ({"url": "http://exa mple.com/"}, "spaces or control characters"),
        ({"url": "http://example.com/" + "a" * 10_000}, "over 2048"),
        ({"url": "http://e.com", "rate": "fast"}, "Expected `float`, got `str` - at `$.rate`"),
        ({"url": "http://e.com", "rate": 0}, "at `$.rate`"),
        ({"url": "http://e.com", "rate": True}, "at `$.rate`"),
        ({"url": "http://e.com", "concurrency": 2.5}, "at `$.concurrency`"),
        ({"url": "http://e.com", "concurrency": -1}, "at `$.concurrency`"),
        ({"url": "http://e.com", "headers": ["x"]}, "at `$.headers`"),
        ({"url": "http://e.com", "headers": {"a": 1}}, "at `$.headers[...]`"),
        ({"url": "http://e.com", "headers": {"bad name": "v"}}, "not a valid token"),
        ({"url": "http://e.com", "headers": {"x": "a\r\nInjected: 1"}}, "CR, LF or NUL"),
        ({"url": "http://e.com", "timeout_s": 1e9}, "at `$.timeout_s`"),
        ({"url": "http://e.com", "pass": 0}, "at `$.pass`"),
        ({"url": "http://e.com", "warm": "yes"}, "at `$.warm`"),
        ({"url": "http://e.com", "user_agent": "x\ny"}, "CR, LF or NUL"),
    ],
)
def test_bad_arguments_are_permanent_failures(args: dict[str, Any], message: str) -> None:
    with pytest.raises(PermanentError, match=r"^http\.warm: ") as caught:
        parse_args(args)
    assert message in str(caught.value)


def test_defaults_and_domain() -> None:
    args, domain = parse_args({"url": "https://Example.COM:8443/a?b", "crawl_delay_s": 2})
    assert domain == "example.com:8443"
    assert (args.pass_, args.rate, args.concurrency, args.warm, args.warm_checks) == (
        1,
        2.0,
        2,
        True,
        3,
    )
    assert args.requests_per_s == 0.5  # Crawl-delay 2 s: at most one every 2 s
    assert parse_args({"url": "http://[::1]:80/"})[1] == "[::1]:80"
    assert parse_args({"url": "http://h/", "future_arg": 1})[1] == "h"
