"""The two nats-py replacements on the hot path, against a real nats-server: the continuous
pull (`PullFeed`) and the pipelined publisher whose futures always resolve."""

import asyncio
import time

import nats.errors
import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from jobstream.events import Bus, PullFeed
from jobstream.events._acks import PipelinedPublisher
from jobstream.events._pull import delivery_of

STREAM = "PULLTEST"


async def _stream_with_consumer(bus: Bus, *, ack: AckPolicy = AckPolicy.EXPLICIT) -> str:
    await bus.js.add_stream(StreamConfig(name=STREAM, subjects=["pt.>"]))
    await bus.js.add_consumer(STREAM, ConsumerConfig(durable_name="c", ack_policy=ack))
    return "c"


async def test_take_returns_the_first_arrival_without_waiting_for_a_full_batch(
    bus: Bus,
) -> None:
    consumer = await _stream_with_consumer(bus)
    feed = PullFeed(bus.nc, stream=STREAM, consumer=consumer, window=100)
    await feed.start()
    try:
        waiting = asyncio.create_task(feed.take(100, timeout_s=20))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await bus.js.publish("pt.one", b"1")
        taken = await waiting
        assert time.monotonic() - started < 10  # not the 20-s timeout: the first arrival
        assert [(d.subject, d.data, d.stream_seq, d.num_delivered) for d in taken] == [
            ("pt.one", b"1", 1, 1)
        ]
        await taken[0].msg.ack()
    finally:
        await feed.stop()


async def test_a_window_bounds_what_is_asked_for(bus: Bus) -> None:
    consumer = await _stream_with_consumer(bus)
    for index in range(10):
        await bus.js.publish(f"pt.{index}", b"x")
    feed = PullFeed(bus.nc, stream=STREAM, consumer=consumer, window=3, holds_taken=True)
    await feed.start()
    try:
        first = await feed.take(10, timeout_s=5)
        await asyncio.sleep(0.3)
        assert len(first) + feed.buffered <= 3  # the taken ones count until a resize
        for delivery in first:
            await delivery.msg.ack()
        seen = len(first)
        while feed.buffered or feed.requested:
            seen += len(await feed.take(10, timeout_s=0.2))
        assert seen <= 3  # nothing asked for once the window closed
    finally:
        await feed.stop()


async def test_max_bytes_bounds_what_is_buffered_and_loses_nothing(bus: Bus) -> None:
    consumer = await _stream_with_consumer(bus, ack=AckPolicy.NONE)
    for index in range(30):
        await bus.js.publish(f"pt.{index}", bytes([index]) * 300_000)
    feed = PullFeed(bus.nc, stream=STREAM, consumer=consumer, window=1000, max_bytes=1_000_000)
    await feed.start()
    seen: list[int] = []
    try:
        for _ in range(200):
            await asyncio.sleep(0.05)  # let whatever was asked for arrive
            # Asked for only while under half of max_bytes is buffered: 1.5 x at most.
            assert feed.buffered * 300_000 <= 1_500_000
            taken = await feed.take(1000, timeout_s=1)
            seen += [d.stream_seq for d in taken]
            if len(seen) == 30:
                break
        assert seen == list(range(1, 31))
        assert not feed.lost  # a request ended by its max_bytes is not a lost feed
    finally:
        await feed.stop()


async def test_a_request_filled_before_its_max_bytes_is_not_a_lost_feed(bus: Bus) -> None:
    # The server ends such a request with "409 Batch Completed".
    consumer = await _stream_with_consumer(bus, ack=AckPolicy.NONE)
    for index in range(12):
        await bus.js.publish(f"pt.{index}", b"x" * 100)
    feed = PullFeed(bus.nc, stream=STREAM, consumer=consumer, window=4, max_bytes=1_000_000)
    await feed.start()
    seen: list[int] = []
    try:
        for _ in range(100):
            seen += [d.stream_seq for d in await feed.take(4, timeout_s=1)]
            assert not feed.lost
            if len(seen) == 12:
                break
        await asyncio.sleep(0.3)  # the last request's end arrives
        assert seen == list(range(1, 13))
        assert not feed.lost
    finally:
        await feed.stop()


async def test_a_deleted_consumer_makes_the_feed_lost(bus: Bus) -> None:
    consumer = await _stream_with_consumer(bus, ack=AckPolicy.NONE)
    feed = PullFeed(bus.nc, stream=STREAM, consumer=consumer, window=10, heartbeat_s=0.2)
    await feed.start()
    try:
        await bus.js.delete_consumer(STREAM, consumer)
        deadline = time.monotonic() + 10
        while not feed.lost and time.monotonic() < deadline:
            await feed.take(10, timeout_s=0.2)
        assert feed.lost
    finally:
        await feed.stop()


def test_delivery_of_reads_both_reply_layouts() -> None:
    class FakeMsg:
        subject = "pt.x"
        data = b"d"

        def __init__(self, reply: str) -> None:
            self.reply = reply

    v1 = delivery_of(FakeMsg("$JS.ACK.S.c.2.17.5.1700000000000000000.3"))  # type: ignore[arg-type]
    v2 = delivery_of(
        FakeMsg("$JS.ACK.dom.acchash.S.c.2.17.5.1700000000000000000.3.rnd")  # type: ignore[arg-type]
    )
    assert v1 is not None and (v1.num_delivered, v1.stream_seq, v1.consumer_seq) == (2, 17, 5)
    assert v2 is not None and (v2.num_delivered, v2.stream_seq, v2.consumer_seq) == (2, 17, 5)
    assert delivery_of(FakeMsg("_INBOX.abc")) is None  # type: ignore[arg-type]
    assert delivery_of(FakeMsg("$JS.ACK.S.c.x.y.z.1.2")) is None  # type: ignore[arg-type]


async def test_a_rejected_publish_fails_its_future_at_once(bus: Bus) -> None:
    await bus.js.add_stream(StreamConfig(name=STREAM, subjects=["pt.>"]))
    publisher = PipelinedPublisher(bus.nc, timeout_s=30)
    try:
        first = await publisher.publish("pt.fenced", b"1", {})
        assert (await first).seq == 1
        fenced = await publisher.publish(
            "pt.fenced", b"2", {"Nats-Expected-Last-Subject-Sequence": "0"}
        )
        started = time.monotonic()
        with pytest.raises(nats.js.errors.APIError) as raised:
            await fenced
        assert raised.value.err_code == 10071
        assert time.monotonic() - started < 10  # the server's answer, not the 30-s reaper
        nowhere = await publisher.publish("no.stream.here", b"x", {})
        with pytest.raises(nats.js.errors.NoStreamResponseError):
            await nowhere
    finally:
        await publisher.close()


async def test_an_unanswered_publish_times_out(bus: Bus) -> None:
    publisher = PipelinedPublisher(bus.nc, timeout_s=0.3)

    async def never_reply(msg: object) -> None:
        return None

    # A plain subscriber that never replies stands in for a lost ack.
    await bus.nc.subscribe("silent.subject", cb=never_reply)
    try:
        future = await publisher.publish("silent.subject", b"x", {})
        with pytest.raises(nats.errors.TimeoutError):
            await future
    finally:
        await publisher.close()


async def test_a_publish_past_the_bound_waits_until_enough_acks_come(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At `MAX_OUTSTANDING` acks unanswered a publish waits until no more than
    `RESUME_OUTSTANDING` are: here, until the silent subject's acks time out."""
    monkeypatch.setattr("jobstream.events._acks.MAX_OUTSTANDING", 4)
    monkeypatch.setattr("jobstream.events._acks.RESUME_OUTSTANDING", 1)
    publisher = PipelinedPublisher(bus.nc, timeout_s=0.5)

    async def never_reply(msg: object) -> None:
        return None

    await bus.nc.subscribe("silent.subject", cb=never_reply)
    await bus.js.add_stream(StreamConfig(name=STREAM, subjects=["pt.>"]))
    try:
        silent = [await publisher.publish("silent.subject", b"x", {}) for _ in range(4)]
        started = time.monotonic()
        stored = await publisher.publish("pt.after", b"y", {})
        assert time.monotonic() - started >= 0.3  # it waited for the timeouts
        assert (await stored).seq == 1
        for future in silent:
            with pytest.raises(nats.errors.TimeoutError):
                await future
        assert (await (await publisher.publish("pt.after", b"z", {}))).seq == 2
    finally:
        await publisher.close()
