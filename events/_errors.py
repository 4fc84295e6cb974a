"""One exception root for jobstream; errors carry data."""

from jobstream.events._urls import redact_url


class JobstreamError(Exception):
    """Root of every error jobstream raises on purpose."""


class ConnectError(JobstreamError):
    """A server could not be reached; `url` is shown with its credentials hidden."""

    def __init__(self, what: str, url: str, cause: str) -> None:
        self.what = what
        self.url = redact_url(url)
        super().__init__(self._message(cause))

    def _message(self, cause: str) -> str:
        return f"cannot reach {self.what} at {self.url}: {cause}"


class AuthenticationError(ConnectError):
    """The server was reached and refused the credentials."""

    def _message(self, cause: str) -> str:
        return f"authentication failed for {self.what} at {self.url}: {cause}"


class TlsError(ConnectError):
    """The TLS handshake failed for good: a certificate not trusted, on either side."""

    def _message(self, cause: str) -> str:
        return f"TLS failed for {self.what} at {self.url}: {cause}"


class ConflictError(JobstreamError):
    """A fenced publish lost: the subject moved on since the writer last looked."""

    def __init__(self, subject: str, expected_seq: int, actual_seq: int | None) -> None:
        super().__init__(
            f"{subject}: expected last sequence {expected_seq}, the log is at {actual_seq}"
        )
        self.subject = subject
        self.expected_seq = expected_seq
        self.actual_seq = actual_seq


class PublishError(JobstreamError):
    def __init__(self, subject: str, cause: str) -> None:
        super().__init__(f"publish to {subject} failed: {cause}")
        self.subject = subject
