"""One exception root for jobstream; errors carry data."""


class JobstreamError(Exception):
    """Root of every error jobstream raises on purpose."""


class ConnectError(JobstreamError):
    def __init__(self, what: str, url: str, cause: str) -> None:
        super().__init__(f"cannot reach {what} at {url}: {cause}")
        self.what = what
        self.url = url


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
