"""Sortable unique ids (ULID layout: 48-bit milliseconds + 80 random bits, Crockford base32)."""

import random
import time
import uuid

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_NAMESPACE = uuid.UUID("6b1c2f4e-7d3a-4c55-9e0f-1a2b3c4d5e6f")


# Two characters (ten bits) at a time: ids are made for every event, on the hot path.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]


def _encode(value: int, length: int) -> str:
    """`value` as `length` (even) Crockford base32 characters."""
    pairs = [_PAIRS[(value >> shift) & 0x3FF] for shift in range(5 * (length - 2), -1, -10)]
    return "".join(pairs)


def new_id() -> str:
    """A new 26-character id that sorts by creation time."""
    millis = time.time_ns() // 1_000_000
    # Seeded from os.urandom, reseeded in a forked child: unique, without a syscall per id.
    randomness = random.getrandbits(80)
    return _encode((millis << 80) | randomness, 26)


def derived_id(*parts: str) -> str:
    """A deterministic id for an event that must be written once whoever writes it."""
    return uuid.uuid5(_NAMESPACE, "/".join(parts)).hex
