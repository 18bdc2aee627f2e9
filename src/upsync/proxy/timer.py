"""A resettable deadline that costs one loop timer however often it is pushed back."""

import asyncio
from collections.abc import Callable


class Deadline:
    __slots__ = ("_at", "_callback", "_handle", "_handle_at", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._at: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = 0.0

    def set(self, delay: float) -> None:
        """Fire `delay` seconds from now; a zero delay means never (nginx's 0 = no timeout)."""
        if delay <= 0:
            self._at = None
            return
        at = self._loop.time() + delay
        self._at = at
        handle = self._handle
        if handle is not None:
            if self._handle_at <= at:
                return  # the pending timer fires first and re-arms itself for the rest
            handle.cancel()
        self._handle_at = at
        self._handle = self._loop.call_at(at, self._fire)

    def clear(self) -> None:
        self._at = None

    def cancel(self) -> None:
        self._at = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def release(self) -> None:
        """Cancel for good and let go of the callback: an owner that is done with its deadline
        breaks the owner -> deadline -> bound method -> owner cycle, so reference counting
        frees it at once instead of the cyclic collector."""
        self.cancel()
        self._callback = _nothing

    def _fire(self) -> None:
        self._handle = None
        at = self._at
        if at is None:
            return
        if self._loop.time() + 0.0005 < at:
            self._handle_at = at
            self._handle = self._loop.call_at(at, self._fire)
            return
        self._at = None
        self._callback()


def _nothing() -> None:
    pass
