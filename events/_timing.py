"""When a schedule fires: an interval (`10m`, `1h30m`) or a five-field cron expression,
checked by the rules nats-server applies (its cron is robfig/cron's, with a seconds field in
front), written in the server's own pattern syntax, and its next fire time (UTC); and the
pattern of a message the server delivers once, at a given time."""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# A task's lease: the queue consumer's ack wait, by default.
DEFAULT_LEASE_S = 30.0

MIN_INTERVAL_S = 1
MAX_INTERVAL_S = 366 * 86_400
_UNIT_S = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_INTERVAL = re.compile(r"(?:\d+[dhms])+")
_INTERVAL_PART = re.compile(r"(\d+)([dhms])")
CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
# Shorthands, as five fields.
CRON_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@dataclass(frozen=True)
class _Bounds:
    low: int
    high: int
    names: dict[str, int]


_BOUNDS = (
    _Bounds(0, 59, {}),
    _Bounds(0, 23, {}),
    _Bounds(1, 31, {}),
    _Bounds(1, 12, {name: number for number, name in enumerate(_MONTHS, start=1)}),
    _Bounds(0, 6, {name: number for number, name in enumerate(_WEEKDAYS)}),
)
# A cron expression with no match within this many years never fires (the server's bound).
_SEARCH_YEARS = 5


def at_pattern(when: datetime) -> str:
    """The `Nats-Schedule` of a one-shot message: `@at` and an RFC 3339 time in UTC, to the
    millisecond (the server parses fractions of a second; a time past fires at once)."""
    return "@at " + when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TimingError(ValueError):
    """An interval or cron expression that the server would refuse, or that never fires."""


def parse_interval(text: str) -> int:
    """`10m`, `90s`, `1h30m`, `1d` as whole seconds; `TimingError` for anything else."""
    cleaned = text.strip().lower()
    if not _INTERVAL.fullmatch(cleaned):
        raise TimingError(
            f"interval {text!r}: expected a number and a unit (s, m, h, d), e.g. 30s, 10m, 1h30m"
        )
    seconds = sum(int(n) * _UNIT_S[unit] for n, unit in _INTERVAL_PART.findall(cleaned))
    if not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
        raise TimingError(
            f"interval {text!r}: must be from {MIN_INTERVAL_S} second to "
            f"{MAX_INTERVAL_S // 86_400} days"
        )
    return seconds


def interval_text(seconds: int) -> str:
    """`5400` as `1h30m`: the shortest form `parse_interval` reads back."""
    parts = []
    for unit, size in _UNIT_S.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


@dataclass(frozen=True)
class Cron:
    """A checked five-field cron expression (UTC)."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    # A `*` in day-of-month or day-of-week makes a day match both fields; else either.
    any_day: bool

    @property
    def server_pattern(self) -> str:
        """The server's six fields: at second 0."""
        return f"0 {self.text}"

    def next_after(self, moment: datetime) -> datetime:
        """The first fire time strictly after `moment`."""
        at = moment.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = at.year + _SEARCH_YEARS
        while at.year <= limit:
            if at.month not in self.months:
                at = _first_of_next_month(at)
            elif not self._day_matches(at):
                at = at.replace(hour=0, minute=0) + timedelta(days=1)
            elif at.hour not in self.hours:
                at = at.replace(minute=0) + timedelta(hours=1)
            elif at.minute not in self.minutes:
                at += timedelta(minutes=1)
            else:
                return at
        raise TimingError(f"cron {self.text!r} never fires within {_SEARCH_YEARS} years")

    def _day_matches(self, at: datetime) -> bool:
        in_days = at.day in self.days
        in_weekdays = (at.isoweekday() % 7) in self.weekdays
        return in_days and in_weekdays if self.any_day else in_days or in_weekdays


def parse_cron(text: str) -> Cron:
    """Five fields (minute hour day-of-month month day-of-week), each `*`, `?`, a number or
    name, a range `a-b`, with an optional step `/n`, or a comma list of those; or a shorthand
    such as `@hourly`. `TimingError` says which field is wrong and why."""
    expression = CRON_MACROS.get(text.strip().lower(), text.strip())
    fields = expression.split()
    if len(fields) != len(CRON_FIELDS):
        raise TimingError(
            f"cron {text!r}: {len(fields)} fields; expected {len(CRON_FIELDS)}: "
            f"{' '.join(CRON_FIELDS)} (or @hourly, @daily, @weekly, @monthly, @yearly)"
        )
    parsed = [
        _field(value, bounds, name)
        for value, bounds, name in zip(fields, _BOUNDS, CRON_FIELDS, strict=True)
    ]
    cron = Cron(
        text=" ".join(fields),
        minutes=parsed[0][0],
        hours=parsed[1][0],
        days=parsed[2][0],
        months=parsed[3][0],
        weekdays=parsed[4][0],
        any_day=parsed[2][1] or parsed[4][1],
    )
    cron.next_after(datetime.now(UTC))  # one that never fires (Feb 30) is refused now
    return cron


def _field(text: str, bounds: _Bounds, name: str) -> tuple[frozenset[int], bool]:
    """A field's values, and whether it was a plain `*`."""
    values: set[int] = set()
    star = False
    for part in filter(None, text.split(",")):
        part_values, part_star = _range(part, bounds, name)
        values |= part_values
        star = star or part_star
    if not values:
        raise TimingError(f"cron {name} field {text!r} is empty")
    return frozenset(values), star


def _range(part: str, bounds: _Bounds, name: str) -> tuple[set[int], bool]:
    where = f"cron {name} field {part!r}"
    span, _, step_text = part.partition("/")
    if "/" in step_text:
        raise TimingError(f"{where}: more than one '/'")
    if span in ("*", "?"):
        low, high, star = bounds.low, bounds.high, True
    else:
        low_text, dash, high_text = span.partition("-")
        if "-" in high_text:
            raise TimingError(f"{where}: more than one '-'")
        low = _value(low_text, bounds, where)
        high = _value(high_text, bounds, where) if dash else low
        star = False
        if step_text and not dash:  # `5/15` means from 5 to the end, every 15
            high = bounds.high
    step = _number(step_text, where) if step_text else 1
    if step == 0:
        raise TimingError(f"{where}: the step must be 1 or more")
    if step > 1:
        star = False
    if low < bounds.low or high > bounds.high:
        raise TimingError(f"{where}: out of range; {name} is {bounds.low} to {bounds.high}")
    if low > high:
        raise TimingError(f"{where}: the range starts after it ends")
    return set(range(low, high + 1, step)), star


def _value(text: str, bounds: _Bounds, where: str) -> int:
    named = bounds.names.get(text.lower())
    return named if named is not None else _number(text, where)


def _number(text: str, where: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise TimingError(f"{where}: {text!r} is not a number")
    return int(text)


def _first_of_next_month(at: datetime) -> datetime:
    year, month = (at.year + 1, 1) if at.month == 12 else (at.year, at.month + 1)
    return at.replace(year=year, month=month, day=1, hour=0, minute=0)
