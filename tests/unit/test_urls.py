"""The one redaction of credentials in server URLs shown to a user."""

import pytest

from jobstream.events import AuthenticationError, ConnectError, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://bar:wrong@127.0.0.1:4222", "nats://bar@127.0.0.1:4222"),
        ("nats://a:pw1@h1:1,nats://c:pw2@h2:2", "nats://a@h1:1,nats://c@h2:2"),
        # A NATS user part without a password is a token.
        ("nats://s3cr3t@h:4222", "nats://***@h:4222"),
        ("tls://s3cr3t@h:4222", "tls://***@h:4222"),
        ("postgresql://postgres@127.0.0.1:1/db", "postgresql://postgres@127.0.0.1:1/db"),
        ("postgresql://u:p@ss@h:5432/db", "postgresql://u@h:5432/db"),
        ("postgresql://u:pa?ss@h/db", "postgresql://u@h/db"),
        (
            "postgresql://h/db?sslmode=require&password=pw",
            "postgresql://h/db?sslmode=require&password=***",
        ),
        ("postgresql://h/db?password=pw&app=a@b", "postgresql://***@b"),
    ],
)
def test_redact_url_hides_passwords_and_tokens(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_connect_errors_never_carry_the_password() -> None:
    unreachable = ConnectError("NATS", "nats://bar:pw@h:1", "no servers available")
    assert str(unreachable) == "cannot reach NATS at nats://bar@h:1: no servers available"
    refused = AuthenticationError("PostgreSQL", "postgresql://u:pw@h/db", "password refused")
    assert (
        str(refused)
        == "authentication failed for PostgreSQL at postgresql://u@h/db: password refused"
    )
    assert isinstance(refused, ConnectError)
    assert refused.url == "postgresql://u@h/db"
