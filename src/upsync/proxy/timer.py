"""Timeouts: a resettable deadline that costs one loop timer however often it is pushed back,
and coarse deadlines for many keys under one ticking timer."""

import asyncio
from collections.abc import Callable
from typing import Final, Generic, TypeVar

K = TypeVar("K")


_NEVER: Final = -1.0  # no deadline: loop times are never negative


class Deadline:
    __slots__ = ("_at", "_callback", "_handle", "_handle_at", "_loop", "_time")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        callback: Callable[[], None],
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`clock`: the loop's time, bound once by the caller for all its deadlines (binding
        it costs each new one about a thousand instructions)."""
        self._loop = loop
        self._time = clock if clock is not None else loop.time
        self._callback = callback
        self._at = _NEVER  # a float, not None: stored unboxed in the compiled build
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = 0.0

    def set(self, delay: float, now: float = -1.0) -> None:
        """Fire `delay` seconds from now; a zero delay means never (nginx's 0 = no timeout).
        `now`: the loop time, when the caller has read it in this turn of the loop."""
        if delay <= 0:
            self._at = _NEVER
            return
        at = (self._time() if now < 0 else now) + delay
        self._at = at
        handle = self._handle
        if handle is not None:
            if self._handle_at <= at:
                return  # the pending timer fires first and re-arms itself for the rest
            handle.cancel()
        self._handle_at = at
        self._handle = self._loop.call_at(at, self._fire)

    def clear(self) -> None:
        self._at = _NEVER

    def cancel(self) -> None:
        self._at = _NEVER
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
        if at == _NEVER:
            return
        if self._time() + 0.0005 < at:
            self._handle_at = at
            self._handle = self._loop.call_at(at, self._fire)
            return
        self._at = _NEVER
        self._callback()


def _nothing() -> None:
    pass


class CoarseTimeouts(Generic[K]):
    """Deadlines for many keys at a coarse resolution. Adding or removing one is a dict
    operation, where a loop timer costs an allocation and a heap insertion and removal: the right
    trade for timeouts of seconds that almost never fire, such as a new connection's wait for its
    first bytes. One loop timer ticks while any deadline is pending; a deadline fires between
    its time and one resolution later."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, resolution: float, expired: Callable[[K], None]
    ) -> None:
        self._loop = loop
        self._resolution = resolution
        self._expired = expired
        self._pending: dict[K, float] = {}
        self._ticker: asyncio.TimerHandle | None = None

    def add(self, key: K, timeout: float) -> float:
        """The loop time it read (a caller that needs "now" too need not read it again), or
        -1.0 for no timeout."""
        if timeout <= 0:
            return -1.0
        now = self._loop.time()
        self._pending[key] = now + timeout
        if self._ticker is None:
            self._ticker = self._loop.call_later(self._resolution, self._tick)
        return now

    def discard(self, key: K) -> None:
        pending = self._pending
        if key in pending:  # not pop(key, None): compiled, a method call by name
            del pending[key]

    def close(self) -> None:
        self._pending.clear()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def _tick(self) -> None:
        self._ticker = None
        now = self._loop.time()
        due = [key for key, at in self._pending.items() if at <= now]
        for key in due:
            del self._pending[key]
        if self._pending:
            self._ticker = self._loop.call_later(self._resolution, self._tick)
        for key in due:
            self._expired(key)
