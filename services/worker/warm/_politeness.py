"""Per-domain politeness as pure functions of a domain's state and the time: whether a request
may start (and when), or when to come back; and how an answer changes the domain's pace.

The state lives in a KV bucket, shared by every worker (see `_gate.py`):
- a GCRA-style pace: requests start `1 / (rate * factor)` apart (a turn taken late may be
  followed sooner, never sooner than half that: `CATCH_UP`);
- bookings: a task that would wait longer than `MAX_WAIT_S` books a turn at the end of the
  domain's queue and is deferred until then, so that a backlog of one domain is put back
  once per task, not polled; bookings are spaced evenly and end at `tat`, and a turn not
  claimed in time lapses. A turn is booked however far off it is: the deferred task waits
  as a message schedule, holding nothing of the queue, whereas a horizon would put each
  page of a long crawl back once per horizon (a site of 50,000 pages at 2/s is 7 hours;
  with a minute's horizon, past the worker's cap on deferrals);
- concurrency slots, taken at a task's turn and held until its requests end, each with its
  holder and an expiry, so that the slot of a killed worker frees itself;
- adaptation: a 429/503 blocks the domain until its Retry-After and halves `factor`; each
  success adds `RECOVERY_STEP` back, up to 1.
"""

import email.utils
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

import msgspec

# A task waits for its turn in place up to this long; beyond, it is deferred.
MAX_WAIT_S = 0.5
# How much of an interval a booked turn may be taken early to make up for the one before
# that came late: the bookings' schedule (the rate) is kept, requests are never closer than
# (1 - CATCH_UP) intervals.
CATCH_UP = 0.5
# A deferred task comes back this long before its turn.
EARLY_RETURN_S = 0.4
# A booked turn this far in the past was not claimed: it lapses.
BOOKING_LAPSES_AFTER_S = 2.0
MIN_FACTOR = 1 / 64
RECOVERY_STEP = 0.05
# Weight of the newest sample in the moving average of how long a slot is held.
HOLD_WEIGHT = 0.2
DEFAULT_RETRY_AFTER_S = 5.0
MAX_RETRY_AFTER_S = 3600.0


class Slot(msgspec.Struct, frozen=True, kw_only=True):
    holder: str
    expires_at: float


class DomainState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    # Times are Unix seconds: the wall clock, shared by hosts (whose clocks NTP must keep
    # well within one interval of each other).
    tat: float = 0.0
    booked: int = 0
    last_start: float = 0.0
    factor: float = 1.0
    blocked_until: float = 0.0
    hold_s: float = 0.0
    slots: list[Slot] = msgspec.field(default_factory=list)


@dataclass(frozen=True)
class Limits:
    rate: float
    concurrency: int


@dataclass(frozen=True)
class Go:
    """Start after `wait_s` (at most `MAX_WAIT_S`); `state` records the turn taken."""

    state: DomainState
    wait_s: float


@dataclass(frozen=True)
class Later:
    """Come back after `delay_s`, at the turn `state` books."""

    state: DomainState
    delay_s: float


class Outcome(Enum):
    SUCCESS = "success"
    FAILURE = "failure"


def rate_interval_s(state: DomainState, limits: Limits) -> float:
    return 1.0 / (limits.rate * state.factor)


def _booking_interval_s(state: DomainState, limits: Limits) -> float:
    """Turns are as far apart as the rate asks, or as the slots allow, whichever is slower."""
    return max(rate_interval_s(state, limits), state.hold_s / limits.concurrency)


def _live_bookings(state: DomainState, spacing_s: float, now: float) -> tuple[int, float]:
    """The bookings still live and the time of the first; those long past have lapsed."""
    first = state.tat - state.booked * spacing_s
    lapse_before = now - BOOKING_LAPSES_AFTER_S
    if state.booked and first < lapse_before:
        lapsed = min(state.booked, math.floor((lapse_before - first) / spacing_s) + 1)
        return state.booked - lapsed, first + lapsed * spacing_s
    return state.booked, first


def claim(state: DomainState, limits: Limits, now: float, *, returning: bool) -> Go | Later:
    """A task's turn for its first request: soon (a turn is due and the task comes back for
    one, or there is room before the turns booked, or none are), or a turn booked at the end
    of the queue to come back for. A new task never takes a due turn: the tasks that booked
    them would be put back again. The slot is taken at the turn (`take_slot`)."""
    pace_s = rate_interval_s(state, limits)
    spacing_s = _booking_interval_s(state, limits)
    # A booked turn taken late is made up for by the next ones, never closer than this.
    soonest = max(now, state.last_start + pace_s * (1 - CATCH_UP), state.blocked_until)
    earliest = max(soonest, state.last_start + pace_s)
    booked, first = _live_bookings(state, spacing_s, now)
    start: float | None = None
    tat = state.tat
    if returning and booked and first <= now + MAX_WAIT_S:  # a turn is due: take it
        start, booked = max(soonest, first), booked - 1
    elif booked and earliest + spacing_s <= first:  # room before the first turn
        start = earliest
    elif not booked:  # `tat`: when the next request is due
        start = max(earliest, state.tat)
        tat = start + pace_s
    if start is not None and start - now <= MAX_WAIT_S:
        going = msgspec.structs.replace(state, tat=tat, booked=booked, last_start=start)
        return Go(going, max(0.0, start - now))
    booked, _ = _live_bookings(state, spacing_s, now)
    turn = max(state.tat, earliest)
    booking = msgspec.structs.replace(state, tat=turn + spacing_s, booked=booked + 1)
    # Back early: a turn is waited for in place, while one claimed late is made up for only
    # in part (`CATCH_UP`), so most of the wait allowed in place goes to absorb the way back
    # (a delayed redelivery, a busy worker).
    return Later(booking, max(0.0, turn - now - EARLY_RETURN_S))


@dataclass(frozen=True)
class Blocked:
    """The domain was slowed down after the turn was given: come back when its block ends."""

    delay_s: float


def take_slot(
    state: DomainState, limits: Limits, now: float, *, holder: str, lease_s: float
) -> DomainState | Blocked | None:
    """One of the domain's slots for `holder` until it leaves (or `lease_s` passes: a killed
    worker's slot frees itself); None while every slot is held."""
    if state.blocked_until > now:
        return Blocked(state.blocked_until - now)
    slots = [slot for slot in state.slots if slot.expires_at > now and slot.holder != holder]
    if len(slots) >= limits.concurrency:
        return None
    taken = Slot(holder=holder, expires_at=now + lease_s)
    return msgspec.structs.replace(state, slots=[*slots, taken])


def pace(state: DomainState, limits: Limits, now: float) -> tuple[DomainState, float]:
    """A follow-up request of a task that holds a slot (a warming check): its start, ahead
    of the bookings, at the domain's pace."""
    start = max(now, state.last_start + rate_interval_s(state, limits), state.blocked_until)
    return msgspec.structs.replace(state, last_start=start), start - now


def release(
    state: DomainState, now: float, *, holder: str, held_s: float, outcome: Outcome
) -> DomainState:
    """Free the holder's slot; a success brings the pace a step back towards the full rate."""
    hold_s = held_s
    if state.hold_s:
        hold_s = (1 - HOLD_WEIGHT) * state.hold_s + HOLD_WEIGHT * held_s
    factor = state.factor
    if outcome is Outcome.SUCCESS:
        factor = min(1.0, factor + RECOVERY_STEP)
    slots = [slot for slot in state.slots if slot.holder != holder and slot.expires_at > now]
    return msgspec.structs.replace(state, slots=slots, hold_s=hold_s, factor=factor)


def throttle(state: DomainState, now: float, retry_after_s: float) -> DomainState:
    """The domain said 429 or 503: no request before its Retry-After, then half the pace
    (halved once per slow-down: answers to requests already on their way do not halve it
    again). Bookings are dropped: their tasks book again after the block."""
    already_blocked = state.blocked_until > now
    factor = state.factor if already_blocked else max(MIN_FACTOR, state.factor / 2)
    blocked_until = max(state.blocked_until, now + retry_after_s)
    return msgspec.structs.replace(
        state, factor=factor, blocked_until=blocked_until, tat=blocked_until, booked=0
    )


def retry_after_s(value: str | None, now: datetime) -> float:
    """A `Retry-After` in seconds from `now`: delta-seconds or an HTTP date; a default when
    absent or unreadable, capped at an hour."""
    if value is None:
        return DEFAULT_RETRY_AFTER_S
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return DEFAULT_RETRY_AFTER_S
    if when.tzinfo is None:  # `-0000`: UTC, as HTTP dates are
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - now).total_seconds()), MAX_RETRY_AFTER_S)


def domain_key(domain: str) -> str:
    """`domain` as a KV key: letters, digits and `-` as they are, a `.` between two of them
    too, any other byte as `=XX` (so `127.0.0.1:8080` → `127.0.0.1=3A8080`)."""
    out: list[str] = []
    for index, ch in enumerate(domain):
        inner_dot = (
            ch == "."
            and 0 < index < len(domain) - 1
            and domain[index - 1] != "."
            and domain[index + 1] != "."
        )
        if (ch.isascii() and ch.isalnum()) or ch == "-" or inner_dot:
            out.append(ch)
        else:
            out.extend(f"={byte:02X}" for byte in ch.encode())
    return "".join(out)
