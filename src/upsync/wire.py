"""What the master and its workers say to each other over a Unix socket: length-prefixed
pickles. Both ends are this program, so pickle carries the frozen configuration model as it is
(built once, in the master: a worker never parses a file the user may be editing meanwhile).

The frozen, slotted dataclasses of the model are pickled by their constructor arguments: the
compiled build cannot set a frozen field from `__setstate__`, so the generic path fails there."""

import copyreg
import dataclasses
import pickle
import struct
from collections.abc import Callable
from typing import Any

from upsync.config import expires, model, upsync, variables

HEADER = struct.Struct("!I")
MAX_FRAME = 1 << 30  # a config or a server list larger than this is a bug, not a message


def _by_constructor(cls: type) -> Callable[[Any], tuple[type, tuple[Any, ...]]]:
    names = tuple(field.name for field in dataclasses.fields(cls))

    def reduce(obj: Any) -> tuple[type, tuple[Any, ...]]:
        return cls, tuple(getattr(obj, name) for name in names)

    return reduce


def _register_model() -> None:
    for module in (expires, model, upsync, variables):
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and dataclasses.is_dataclass(value)
                and value.__module__ == module.__name__
            ):
                copyreg.pickle(value, _by_constructor(value))


_register_model()


def frame(message: object) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


class FrameReader:
    """Bytes in, messages out: fed whatever a read returned, it hands back each message
    completed by it (a frame may span reads, a read may hold several frames)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[object]:
        self.buffer += data
        messages: list[object] = []
        while len(self.buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buffer)
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes")
            end = HEADER.size + size
            if len(self.buffer) < end:
                break
            messages.append(pickle.loads(self.buffer[HEADER.size : end]))
            del self.buffer[:end]
        return messages
