"""One read of the log shared by the readers of one process.

The Postgres and NDJSON projectors of an unpartitioned projection both read every task event.
Each on its own reader, nats-server delivers every event twice and the process parses and
decodes it twice. A `SharedSource` reads the log once and hands each batch to every
follower that keeps up; each keeps its own position and gets exactly the messages
`event_batches` would give it from there, in batches of up to `batch_max` (what it was
handed while busy with the one before, as its own reader would have read ahead).

A follower reads on its own while it is behind the shared read: when it starts behind it, or
after it stalled (held more than two batches' worth for `stall_s`, as the Postgres projector
does through a database outage), so that one stalled follower never holds up the others. It
joins the shared read again as soon as its own read reaches it. The shared read runs while
anyone follows it, at the pace of the slowest.
"""

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import Protocol

from jobstream.events._bus import Bus
from jobstream.events._source import DEFAULT_BATCH_MAX, SourceItem, event_batches
from jobstream.events._subjects import EVENT_SUBJECTS

log = logging.getLogger(__name__)

# Messages a follower may hold, in batches of `batch_max`, before the shared read waits for
# it; and how long it waits.
SHARED_DEPTH_BATCHES = 2
SHARED_STALL_S = 3.0


class BatchSource(Protocol):
    """Batches of the log from `start_seq` on, until `stop` (as `event_batches`)."""

    def __call__(
        self, *, start_seq: int, stop: asyncio.Event
    ) -> AsyncGenerator[list[SourceItem], None]: ...


class _Follower:
    """A follower of the shared read: the batches handed to it and not yet taken."""

    def __init__(self) -> None:
        self.batches: collections.deque[list[SourceItem]] = collections.deque()
        self.held = 0  # messages in `batches`
        self.left = False  # no more batches come after those held
        self.changed = asyncio.Event()  # a batch came, or it was left
        self.taken = asyncio.Event()  # a batch was taken

    def give(self, batch: list[SourceItem]) -> None:
        self.batches.append(batch)
        self.held += len(batch)
        self.changed.set()

    def leave(self) -> None:
        self.left = True
        self.changed.set()

    async def take(self, stop: asyncio.Event, most: int) -> list[SourceItem] | None:
        """The batches held, as one of up to `most` messages (or the first, if bigger), as
        its own reader would have read them while the follower was busy; None once left and
        every batch is taken, or when `stop` is set."""
        while not self.batches:
            if self.left or stop.is_set():
                return None
            self.changed.clear()
            await _first_of(self.changed, stop)
        batch = self.batches.popleft()
        while self.batches and len(batch) + len(self.batches[0]) <= most:
            batch = batch + self.batches.popleft()
        self.held -= len(batch)
        self.taken.set()
        return batch


async def _first_of(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


class SharedSource:
    """Reads the log (`filter_subject`) once for any number of followers (`batches`)."""

    def __init__(
        self,
        bus: Bus,
        *,
        filter_subject: str = EVENT_SUBJECTS,
        batch_max: int = DEFAULT_BATCH_MAX,
        depth_batches: int = SHARED_DEPTH_BATCHES,
        stall_s: float = SHARED_STALL_S,
    ) -> None:
        self.bus = bus
        self.filter_subject = filter_subject
        self.batch_max = batch_max
        self.depth = depth_batches * batch_max  # messages
        self.stall_s = stall_s
        self._followers: list[_Follower] = []
        self._reading: asyncio.Task[None] | None = None
        self._stop_reading = asyncio.Event()
        # Every batch handed out from now on starts at this sequence or after.
        self._next_seq = 1
        # Once the shared read failed, every follower reads on its own (and meets the error).
        self._failed = False
        # How often a follower joined the shared read, and how often one was left behind.
        self.joins = 0
        self.stalls = 0

    @property
    def read_up_to(self) -> int:
        """The sequence up to which the shared read has handed out the log."""
        return self._next_seq - 1

    def batches(
        self, *, start_seq: int, stop: asyncio.Event
    ) -> AsyncGenerator[list[SourceItem], None]:
        """Batches of the log from `start_seq` on, until `stop`: `event_batches`'s, read once
        for all followers. Close the generator (`contextlib.aclosing`) to stop following."""
        return self._follow(start_seq, stop)

    async def _follow(
        self, start_seq: int, stop: asyncio.Event
    ) -> AsyncGenerator[list[SourceItem], None]:
        position = max(1, start_seq) - 1  # the last sequence handed to this follower
        follower: _Follower | None = None
        try:
            while not stop.is_set():
                if follower is None and self._may_join(position):
                    follower = self._join(position + 1)
                if follower is None:
                    # Its own read, joining the shared one as soon as a batch reaches it:
                    # from then on it is handed every batch that one reads.
                    own = self._log_from(position + 1, stop)
                    async with contextlib.aclosing(own):
                        async for batch in own:
                            position = batch[-1].seq
                            if self._may_join(position):
                                follower = self._join(position + 1)
                            yield batch
                            if follower is not None:
                                break
                    continue
                shared = await follower.take(stop, self.batch_max)
                if shared is None:  # left behind (or stopped): it reads on its own
                    left, follower = follower, None
                    await self._leave(left)
                    continue
                if shared[0].seq <= position:
                    shared = [item for item in shared if item.seq > position]
                if shared:
                    position = shared[-1].seq
                    yield shared
        finally:
            if follower is not None:
                await self._leave(follower)

    def _may_join(self, position: int) -> bool:
        """Whether a follower that has read up to `position` may join the shared read (none
        of the batches it would miss are past its position)."""
        if self._failed:
            return False
        return self._reading is None or position + 1 >= self._next_seq

    def _log_from(
        self, start_seq: int, stop: asyncio.Event
    ) -> AsyncGenerator[list[SourceItem], None]:
        """A reader of the log (a follower's own, or the shared one) from `start_seq` on."""
        return event_batches(
            self.bus,
            start_seq=start_seq,
            stop=stop,
            filter_subject=self.filter_subject,
            batch_max=self.batch_max,
        )

    def _join(self, next_seq: int) -> _Follower:
        follower = _Follower()
        if self._reading is None:
            self._next_seq = next_seq
            self._stop_reading = asyncio.Event()
            self._reading = asyncio.create_task(self._read(next_seq, self._stop_reading))
        self._followers.append(follower)
        self.joins += 1
        return follower

    async def _leave(self, follower: _Follower) -> None:
        """Stop handing batches to `follower`; the last to leave stops the shared read."""
        if follower in self._followers:
            self._followers.remove(follower)
        follower.leave()
        reading = self._reading
        if self._followers or reading is None:
            return
        self._reading = None
        self._stop_reading.set()
        # Its consumer deleted before the next one starts. If this wait is cancelled, the
        # read still ends by itself: it was told to stop.
        await asyncio.wait((reading,))

    async def _read(self, start_seq: int, stop: asyncio.Event) -> None:
        batches = self._log_from(start_seq, stop)
        try:
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    if stop.is_set():  # the last follower left; another may have joined since
                        break
                    # Handed to every follower before any wait: one that joins while the
                    # others are waited for gets the batches after this one, and no gap.
                    for follower in self._followers:
                        follower.give(batch)
                    self._next_seq = batch[-1].seq + 1
                    await self._room(stop)
        except Exception:
            if self._reading is asyncio.current_task():
                log.exception("the shared read of the log failed; its followers read on their own")
                self._failed = True
        finally:
            if self._reading is asyncio.current_task():
                self._reading = None
                for follower in self._followers:
                    follower.leave()
                self._followers.clear()

    async def _room(self, stop: asyncio.Event) -> None:
        """Wait until no follower holds more than `depth` messages; one that still does after
        `stall_s` is left behind, to read on its own."""
        deadline = time.monotonic() + self.stall_s
        for follower in list(self._followers):
            while follower.held > self.depth and not (follower.left or stop.is_set()):
                follower.taken.clear()
                remaining = deadline - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_first_of(follower.taken, stop), max(0.0, remaining))
                if follower.left or follower.held <= self.depth:
                    break
                if time.monotonic() >= deadline:
                    log.info("a reader of the log stalled: it reads on its own until it catches up")
                    self._followers.remove(follower)
                    follower.leave()
                    self.stalls += 1
                    break
        if not self._followers and self._reading is asyncio.current_task():
            self._reading = None  # nobody left to read for: this read ends
            stop.set()
