"""Per-domain politeness as pure functions: Retry-After, domain keys, and a simulated fleet
that keeps the pace, the slots and the slow-downs."""

import heapq
from datetime import UTC, datetime

import msgspec
import pytest

from jobstream.services.worker.warm import domain_key, retry_after_s
from jobstream.services.worker.warm._politeness import (
    DEFAULT_RETRY_AFTER_S,
    MAX_RETRY_AFTER_S,
    MAX_WAIT_S,
    Blocked,
    DomainState,
    Go,
    Later,
    Limits,
    Outcome,
    claim,
    pace,
    release,
    take_slot,
    throttle,
)

NOW = datetime(2026, 12, 2, 1, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        (None, DEFAULT_RETRY_AFTER_S),
        ("soon", DEFAULT_RETRY_AFTER_S),
        ("-3", DEFAULT_RETRY_AFTER_S),
        ("1.5", DEFAULT_RETRY_AFTER_S),
        ("99999999", MAX_RETRY_AFTER_S),
        ("Wed, 02 Dec 2026 01:00:30 GMT", 30.0),
        ("Wed, 02 Dec 2026 00:59:00 GMT", 0.0),  # already past
        ("Wednesday, 02-Dec-26 01:01:00 GMT", 60.0),  # RFC 850 form
        ("Wed Dec  2 01:00:10 2026", 10.0),  # asctime form
    ],
)
def test_retry_after(value: str | None, expected: float) -> None:
    assert retry_after_s(value, NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("domain", "key"),
    [
        ("example.com", "example.com"),
        ("127.0.0.1:8080", "127.0.0.1=3A8080"),
        ("[::1]:80", "=5B=3A=3A1=5D=3A80"),
        ("a_b.example.", "a=5Fb.example=2E"),
        (".x..y", "=2Ex=2E=2Ey"),
        ("bücher.de", "b=C3=BCcher.de"),
    ],
)
def test_domain_keys_are_kv_keys(domain: str, key: str) -> None:
    assert domain_key(domain) == key


def test_domain_keys_do_not_collide() -> None:
    domains = ["a:1", "a=3A1", "a.1", "a_1", "A:1".lower(), "a:10"]
    assert len({domain_key(d) for d in domains}) == len(set(domains))


class Fleet:
    """Tasks of one domain that come and go as workers would run them: each asks for its
    turn, waits or is deferred; at its turn it takes a slot (or looks again a little later,
    or is deferred), holds it for `hold_s`, then leaves."""

    def __init__(self, limits: Limits, *, hold_s: float) -> None:
        self.limits = limits
        self.hold_s = hold_s
        self.state = DomainState()
        self.starts: list[float] = []
        self.deferrals = 0
        self.returning: set[str] = set()
        self.max_in_flight = 0
        self._events: list[tuple[float, int, str, str]] = []
        self._order = 0

    def at(self, when: float, what: str, task: str) -> None:
        self._order += 1
        heapq.heappush(self._events, (when, self._order, what, task))

    def run(self, tasks: int, *, until: float) -> None:
        for index in range(tasks):
            self.at(0.0, "arrive", f"t{index}")
        in_flight = 0
        while self._events and self._events[0][0] < until:
            now, _, what, task = heapq.heappop(self._events)
            if what == "leave":
                in_flight -= 1
                self.state = release(
                    self.state, now, holder=task, held_s=self.hold_s, outcome=Outcome.SUCCESS
                )
            elif what == "turn":
                taken = take_slot(self.state, self.limits, now, holder=task, lease_s=60)
                if not isinstance(taken, DomainState):
                    self.at(now + 0.02, "turn", task)
                    continue
                self.state = taken
                self.starts.append(now)
                in_flight += 1
                self.max_in_flight = max(self.max_in_flight, in_flight)
                self.at(now + self.hold_s, "leave", task)
            else:
                decision = claim(self.state, self.limits, now, returning=task in self.returning)
                self.state = decision.state
                if isinstance(decision, Later):
                    self.deferrals += 1
                    self.returning.add(task)
                    self.at(now + decision.delay_s, "arrive", task)
                else:
                    assert decision.wait_s <= MAX_WAIT_S
                    self.at(now + decision.wait_s, "turn", task)


def test_a_backlog_keeps_the_pace_and_is_deferred_about_once_per_task() -> None:
    fleet = Fleet(Limits(rate=5.0, concurrency=2), hold_s=0.05)
    fleet.run(100, until=30.0)
    assert len(fleet.starts) == 100
    gaps = [b - a for a, b in zip(sorted(fleet.starts), sorted(fleet.starts)[1:], strict=False)]
    assert min(gaps) >= 0.2 - 1e-9  # every turn on time: none early
    rate = (len(fleet.starts) - 1) / (max(fleet.starts) - min(fleet.starts))
    assert rate == pytest.approx(5.0, rel=0.05)
    assert fleet.deferrals <= 100  # a backlog is booked, once per task at most, not polled
    assert fleet.max_in_flight <= 2


def test_slow_answers_are_limited_by_the_slots() -> None:
    fleet = Fleet(Limits(rate=100.0, concurrency=3), hold_s=1.0)
    fleet.run(30, until=60.0)
    assert len(fleet.starts) == 30
    assert fleet.max_in_flight <= 3
    assert fleet.deferrals <= 30


def test_a_slow_down_blocks_then_halves_the_pace_and_successes_restore_it() -> None:
    limits = Limits(rate=4.0, concurrency=2)
    state = throttle(DomainState(), 100.0, retry_after_s=2.0)
    assert state.blocked_until == 102.0
    assert state.factor == 0.5
    # A second 429 of a request already on its way does not halve again.
    assert throttle(state, 100.1, retry_after_s=2.0).factor == 0.5
    decision = claim(state, limits, 100.5, returning=False)
    assert isinstance(decision, Later)
    assert 100.5 + decision.delay_s >= 102.0 - MAX_WAIT_S
    first = claim(decision.state, limits, 101.8, returning=True)
    assert isinstance(first, Go)
    assert 101.8 + first.wait_s == pytest.approx(102.0)
    state, now, starts = first.state, 102.0, []
    for _ in range(20):
        going = claim(state, limits, now, returning=False)
        assert isinstance(going, Go)
        state, now = going.state, now + going.wait_s
        starts.append(now)
    assert (starts[-1] - starts[0]) / 19 == pytest.approx(0.5)  # 2/s: half of 4/s
    # A turn given before the slow-down does not get a slot during it.
    blocked = take_slot(throttle(DomainState(), 200.0, 2.0), limits, 201.0, holder="c", lease_s=9)
    assert blocked == Blocked(1.0)
    recovered = first.state
    for _ in range(10):
        recovered = release(recovered, 103.0, holder="a", held_s=0.1, outcome=Outcome.SUCCESS)
    assert recovered.factor == pytest.approx(1.0)


def test_a_killed_holders_slot_expires() -> None:
    limits = Limits(rate=100.0, concurrency=1)
    held = take_slot(DomainState(), limits, 1000.0, holder="killed", lease_s=5.0)
    assert isinstance(held, DomainState)
    assert take_slot(held, limits, 1001.0, holder="other", lease_s=5.0) is None
    assert take_slot(held, limits, 1005.5, holder="other", lease_s=5.0) is not None
    freed = release(held, 1002.0, holder="killed", held_s=2.0, outcome=Outcome.SUCCESS)
    assert take_slot(freed, limits, 1002.0, holder="other", lease_s=5.0) is not None


def test_warming_requests_go_at_the_pace() -> None:
    limits = Limits(rate=2.0, concurrency=1)
    held = claim(DomainState(), limits, 1000.0, returning=False)
    assert isinstance(held, Go)
    assert held.wait_s == 0
    state, wait_s = pace(held.state, limits, 1000.1)
    assert wait_s == pytest.approx(0.4)
    _, wait_s = pace(state, limits, 1000.1)
    assert wait_s == pytest.approx(0.9)


def test_state_written_before_is_read_with_new_fields_defaulted() -> None:
    state = msgspec.json.decode(b'{"tat": 5.0, "future_field": 1}', type=DomainState)
    assert state.tat == 5.0
    assert state.factor == 1.0
    assert state.blocked_until == 0.0
