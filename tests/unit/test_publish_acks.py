"""How `PipelinedPublisher` reads a publish's reply: an ack, the server's error, or a clear
error for a reply it cannot read (a foreign client may publish anything to its inbox)."""

import asyncio

import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg

from jobstream.events._acks import PipelinedPublisher


async def reply_to(data: bytes, headers: dict[str, str] | None = None) -> "asyncio.Future[object]":
    publisher = PipelinedPublisher(None, timeout_s=5)  # type: ignore[arg-type]  # not sent
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    publisher._futures["7"] = future  # type: ignore[assignment]
    await publisher._on_reply(Msg(None, subject="_INBOX.abc.7", data=data, headers=headers))  # type: ignore[arg-type]
    assert future.done()
    return future


async def test_an_ack_becomes_a_pub_ack() -> None:
    ack = (await reply_to(b'{"stream":"EVENTS","seq":42,"duplicate":true,"other":1}')).result()
    assert (ack.stream, ack.seq, ack.duplicate) == ("EVENTS", 42, True)  # type: ignore[attr-defined]


async def test_the_servers_error_becomes_an_api_error() -> None:
    reply = b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 3"}}'
    with pytest.raises(nats.js.errors.APIError) as raised:
        (await reply_to(reply)).result()
    assert (raised.value.err_code, raised.value.description) == (10071, "wrong last sequence: 3")


async def test_no_responders_is_no_stream() -> None:
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        (await reply_to(b"", {"Status": "503"})).result()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{not json",
        b"[1, 2]",
        b'"text"',
        b'{"stream":"EVENTS"}',
        b'{"seq":1}',
        b'{"stream":5,"seq":1}',
        b'{"stream":"EVENTS","seq":"1"}',
        b'{"error":"boom"}',
        b"{" + b'"x":' * 1000,
        b'{"stream":"' + b"s" * 2_000_000 + b'","seq":"x"}',
    ],
)
async def test_an_unreadable_reply_is_a_clear_error(data: bytes) -> None:
    with pytest.raises(nats.errors.Error, match="unreadable publish ack"):
        (await reply_to(data)).result()
