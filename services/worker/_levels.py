"""A worker's feeds, one per priority level of its queue: free slots go to the highest level
first, and a small fixed share to the lower levels, so a flood of high work never starves
them.

Each level keeps pull requests outstanding on its own consumer, so a message of any level
reaches an idle worker at once. Free slots are offered down the levels: a level that has work
waiting (its consumer's backlog, as its last delivery reported) claims what it asked for, and
the next level is offered only what is left. A level with nothing waiting claims nothing, so
its request may be answered while a lower level's is: that message is then held until the
next slot frees. At most one window per level is held so.

Starvation control: a lower level passed over for `share_every - 1` slots in a row is offered
slots first until it is served; a level with no work left is simply passed over again.

Before every level come the queue's due tasks: tasks that waited (deferred, or for a retry)
outside the queue and whose time has come, as a redelivery comes before new messages.
"""

import asyncio

from nats.aio.client import Client as NatsClient

from jobstream.events import (
    LEVELS_HIGH_FIRST,
    TASKS_STREAM,
    Delivery,
    PriorityLevel,
    PullFeed,
    due_consumer_name,
)
from jobstream.events import worker_consumer_name as consumer_name

# Of every `share_every` slots handed out, one goes first to the normal level and one to the
# low level (when they have work): 10 gives high at least 80% of a busy worker, the others
# at least 10% each.
DEFAULT_SHARE_EVERY = 10


def offer_order(passed_over: dict[PriorityLevel, int], share_every: int) -> list[PriorityLevel]:
    """The levels in the order the next slots are offered to them: highest first, except that
    a lower level passed over for `share_every - 1` slots in a row comes first (and stays
    first until it is served or has nothing)."""
    due = [level for level in LEVELS_HIGH_FIRST if passed_over[level] >= share_every - 1]
    return [*due, *(level for level in LEVELS_HIGH_FIRST if level not in due)]


def record_served(passed_over: dict[PriorityLevel, int], served: PriorityLevel) -> None:
    """A slot went to `served`: every level below it was passed over once more."""
    passed_over[served] = 0
    for level in LEVELS_HIGH_FIRST[LEVELS_HIGH_FIRST.index(served) + 1 :]:
        passed_over[level] += 1


class LevelFeeds:
    def __init__(
        self,
        nc: NatsClient,
        *,
        queue: str,
        expires_s: float,
        heartbeat_s: float,
        share_every: int = DEFAULT_SHARE_EVERY,
    ) -> None:
        self.share_every = max(len(LEVELS_HIGH_FIRST), share_every)
        self._arrived = asyncio.Event()

        def feed(consumer: str) -> PullFeed:
            return PullFeed(
                nc,
                stream=TASKS_STREAM,
                consumer=consumer,
                window=0,
                holds_taken=True,
                expires_s=expires_s,
                heartbeat_s=heartbeat_s,
                arrived=self._arrived,
            )

        self.feeds = {level: feed(consumer_name(queue, level)) for level in LEVELS_HIGH_FIRST}
        self.due = feed(due_consumer_name(queue))
        # Slots handed to a higher level since each level was last served.
        self.passed_over = dict.fromkeys(LEVELS_HIGH_FIRST, 0)

    @property
    def all_feeds(self) -> list[PullFeed]:
        return [self.due, *self.feeds.values()]

    async def start(self) -> None:
        for feed in self.all_feeds:
            await feed.start()

    async def stop(self) -> None:
        for feed in self.all_feeds:
            await feed.stop()

    def order(self) -> list[PriorityLevel]:
        return offer_order(self.passed_over, self.share_every)

    @property
    def buffered(self) -> int:
        return sum(feed.buffered for feed in self.all_feeds)

    @property
    def requested(self) -> int:
        return sum(feed.requested for feed in self.all_feeds)

    @property
    def lost(self) -> list[PullFeed]:
        return [feed for feed in self.all_feeds if feed.lost]

    async def take(self, free: int, timeout_s: float) -> list[Delivery]:
        """Up to `free` deliveries, each from the first level in `order` that has one; if none
        is buffered, offer the slots and wait up to `timeout_s` for the first delivery."""
        taken = self._take_buffered(free)
        if taken or free <= 0:
            return taken
        self._arrived.clear()
        await self.offer(free)
        if not self.buffered:
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout_s)
            except TimeoutError:
                for feed in self.all_feeds:
                    feed.check_alive()
                return []
        return self._take_buffered(free)

    async def offer(self, free: int) -> None:
        """Size each level's pull window to the slots the due tasks and the levels before it
        leave."""
        claimed = 0
        for feed in [self.due, *(self.feeds[level] for level in self.order())]:
            await feed.resize(max(0, free - claimed))
            claimed += feed.buffered + (feed.requested if feed.backlog > 0 else 0)

    def _take_buffered(self, free: int) -> list[Delivery]:
        taken: list[Delivery] = []
        while len(taken) < free:
            delivery = self._take_one()
            if delivery is None:
                break
            taken.append(delivery)
        return taken

    def _take_one(self) -> Delivery | None:
        due = self.due.take_buffered(1)
        if due:
            return due[0]
        for level in self.order():
            got = self.feeds[level].take_buffered(1)
            if got:
                record_served(self.passed_over, level)
                return got[0]
        return None
