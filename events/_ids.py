"""Sortable unique ids (ULID layout: 48-bit milliseconds + 80 random bits, Crockford base32)."""

import os
import time
import uuid

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_NAMESPACE = uuid.UUID("6b1c2f4e-7d3a-4c55-9e0f-1a2b3c4d5e6f")


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, index = divmod(value, 32)
        chars.append(_ALPHABET[index])
    return "".join(reversed(chars))


def new_id() -> str:
    """A new 26-character id that sorts by creation time."""
    millis = time.time_ns() // 1_000_000
    randomness = int.from_bytes(os.urandom(10), "big")
    return _encode((millis << 80) | randomness, 26)


def derived_id(*parts: str) -> str:
    """A deterministic id for an event that must be written once whoever writes it."""
    return uuid.uuid5(_NAMESPACE, "/".join(parts)).hex
