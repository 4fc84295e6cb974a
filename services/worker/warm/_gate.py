"""The fleet-wide gate of each domain: `_politeness`'s decisions applied to the domain's key in
the `JOBSTREAM_DOMAINS` bucket with compare-and-set, so every worker on every host sees one
pace, one set of slots and one slow-down per domain."""

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import msgspec
import nats.js.errors
from nats.js.kv import KeyValue

from jobstream.services.worker._handlers import Defer
from jobstream.services.worker.warm._politeness import (
    MAX_WAIT_S,
    Blocked,
    DomainState,
    Go,
    Later,
    Limits,
    Outcome,
    claim,
    domain_key,
    pace,
    release,
    take_slot,
    throttle,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
# Compare-and-set retries before giving up (each lost race means another writer got through).
MAX_RACES = 50
CROWDED_BACKOFF_CAP_S = 8.0
# How often a task whose turn has come looks for a free slot.
SLOT_POLL_S = 0.02
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DomainState)


@dataclass(frozen=True)
class Pass:
    """A slot held on a domain, from `enter` until `leave`."""

    domain: str
    holder: str
    entered_at: float


class DomainGate:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        # A process's own tasks take turns per domain: their races would be lost anyway.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def enter(
        self, domain: str, limits: Limits, *, holder: str, lease_s: float, deferrals: int
    ) -> Pass:
        """Wait for the domain's turn (at most `MAX_WAIT_S`), then for a free slot (as long
        again at most), or raise `Defer`: until the turn booked for the task, or, if every
        slot stayed taken, for longer each time the task was put back (`deferrals`)."""

        def turn(state: DomainState, now: float) -> tuple[DomainState, Go | Later]:
            decision = claim(state, limits, now, returning=deferrals > 0)
            return decision.state, decision

        decision = await self._change(domain, turn)
        if isinstance(decision, Later):
            raise Defer(f"domain {domain}: a turn booked", delay_s=decision.delay_s)
        await asyncio.sleep(decision.wait_s)

        def slot(state: DomainState, now: float) -> tuple[DomainState | None, Blocked | bool]:
            taken = take_slot(state, limits, now, holder=holder, lease_s=lease_s)
            if isinstance(taken, Blocked):
                return None, taken
            return taken, taken is not None

        give_up_at = time.monotonic() + MAX_WAIT_S
        while not (taken := await self._change(domain, slot, own_turn=False)):
            if time.monotonic() >= give_up_at:
                raise Defer(
                    f"domain {domain}: every slot taken", delay_s=_crowded_backoff_s(deferrals)
                )
            await asyncio.sleep(SLOT_POLL_S)
        if isinstance(taken, Blocked):
            raise Defer(f"domain {domain}: slowed down", delay_s=taken.delay_s)
        return Pass(domain=domain, holder=holder, entered_at=time.time())

    async def pace(self, slot: Pass, limits: Limits, *, max_wait_s: float) -> bool:
        """Wait for the turn of one more request of the slot's task; False (no turn taken)
        if that is more than `max_wait_s` away."""

        def decide(state: DomainState, now: float) -> tuple[DomainState | None, float]:
            paced, wait_s = pace(state, limits, now)
            return (paced if wait_s <= max_wait_s else None), wait_s

        wait_s = await self._change(slot.domain, decide)
        if wait_s > max_wait_s:
            return False
        await asyncio.sleep(wait_s)
        return True

    async def leave(self, slot: Pass, outcome: Outcome) -> None:
        held_s = time.time() - slot.entered_at

        def decide(state: DomainState, now: float) -> tuple[DomainState, None]:
            return release(state, now, holder=slot.holder, held_s=held_s, outcome=outcome), None

        await self._change(slot.domain, decide, own_turn=False)

    async def slow_down(self, slot: Pass, retry_after_s: float) -> float:
        """Free the slot, block the domain for `retry_after_s` and halve its pace; the time
        until the block ends."""
        held_s = time.time() - slot.entered_at

        def decide(state: DomainState, now: float) -> tuple[DomainState, float]:
            freed = release(state, now, holder=slot.holder, held_s=held_s, outcome=Outcome.FAILURE)
            blocked = throttle(freed, now, retry_after_s)
            return blocked, blocked.blocked_until - now

        return await self._change(slot.domain, decide, own_turn=False)

    async def _change(
        self,
        domain: str,
        decide: Callable[[DomainState, float], tuple[DomainState | None, T]],
        *,
        own_turn: bool = True,
    ) -> T:
        """Read the domain's state, decide, and write the new state only if no one else wrote
        in between; else read and decide again. `own_turn`: wait for the process's other
        changes of the domain first (their races would be lost anyway); slots are taken and
        given back without waiting behind the bookings."""
        lock = self._locks[domain] if own_turn else contextlib.nullcontext()
        key = domain_key(domain)
        async with lock:
            for _ in range(MAX_RACES):
                try:
                    entry = await self._kv.get(key)
                except nats.js.errors.KeyNotFoundError:
                    entry = None
                current = _decode(entry.value) if entry is not None else DomainState()
                new, outcome = decide(current, time.time())
                if new is None:
                    return outcome
                try:
                    if entry is None:
                        await self._kv.create(key, _encoder.encode(new))
                    else:
                        await self._kv.update(key, _encoder.encode(new), last=entry.revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    await asyncio.sleep(random.uniform(0, 0.005))
                    continue
                return outcome
        raise Defer(f"domain {domain}: too many writers at once", delay_s=random.uniform(0.1, 0.5))


def _crowded_backoff_s(deferrals: int) -> float:
    """How long a task stays away after finding every slot taken at its turn, growing with
    each time it was put back: slots held by slow requests (or by a killed worker, until
    their lease ends) are not polled by every waiting task."""
    cap_s = min(CROWDED_BACKOFF_CAP_S, 0.25 * 2.0 ** min(deferrals, 10))
    return random.uniform(0.5, 1.0) * cap_s


def _decode(value: bytes | None) -> DomainState:
    """The stored state; a value that is not one (a foreign writer) is started afresh."""
    try:
        return _decoder.decode(value or b"")
    except msgspec.DecodeError:
        log.warning("domain state unreadable; starting afresh")
        return DomainState()
