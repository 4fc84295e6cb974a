"""One JSON encoder and one decoder per type, built once."""

from typing import Any

import msgspec

from jobstream.events._catalogue import Event, TaskMessage

_encoder = msgspec.json.Encoder()
_event_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)
_task_decoder = msgspec.json.Decoder(TaskMessage)


class DecodeError(ValueError):
    """A payload on one of our subjects is not a valid event or task message."""


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def encode_into(value: Any, buffer: bytearray, offset: int = -1) -> None:
    _encoder.encode_into(value, buffer, offset)


def decode_event(data: bytes) -> Event:
    try:
        return _event_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise DecodeError(f"not a jobstream event: {exc}") from exc


def decode_task_message(data: bytes) -> TaskMessage:
    try:
        return _task_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise DecodeError(f"not a jobstream task message: {exc}") from exc
