"""How far the dispatcher has read the log: a small key of its own in the dispatcher's bucket,
so that readiness checks need not read the dispatcher's whole state."""

import msgspec

PROGRESS_KEY = "progress"


class DispatcherProgress(msgspec.Struct, frozen=True, kw_only=True):
    last_seq: int
    # Events set aside as unusable (poison), since the dispatcher's state began.
    set_aside: int = 0


_decoder = msgspec.json.Decoder(DispatcherProgress)


def decode_progress(data: bytes) -> DispatcherProgress | None:
    """The progress record in `data`; None if it is not one."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError:
        return None
