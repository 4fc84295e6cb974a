"""Submit-once keys (`--idempotency-key`): their bound, and their form as a KV key."""

import hashlib

from jobstream.events import JobstreamError

MAX_IDEMPOTENCY_KEY_LENGTH = 200


def idempotency_bucket_key(key: str) -> str:
    """A key of any characters as a KV key."""
    return hashlib.sha256(key.encode()).hexdigest()


def check_idempotency_key(key: str) -> str:
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise JobstreamError(
            f"--idempotency-key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
        )
    return key
