"""Every client connection of one process, and what a connection may ask of the process it runs
in: to be admitted (worker_connections, the descriptor budget), the shared timer that closes a
connection that never sends, and to be let go. The App keeps lifecycle only (build, listen,
reload, stop); a connection never sees it."""

import asyncio
import logging
import os
import resource
from collections.abc import Callable
from typing import TYPE_CHECKING

from upsync.proxy.timer import CoarseTimeouts

if TYPE_CHECKING:
    from upsync.proxy.client import ClientConnection

log = logging.getLogger("upsync")

# how many idle connections one new connection past worker_connections may close (nginx: 32)
IDLE_CLOSED_AT_ONCE = 32
# how late a silent new connection's client_header_timeout may fire
FIRST_BYTES_RESOLUTION = 0.25


def descriptor_budget() -> tuple[int, int]:
    """The open-file limit, and how many descriptors the process holds before any connection."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        held = len(os.listdir("/proc/self/fd"))
    except OSError:
        held = 32
    return (soft if soft != resource.RLIM_INFINITY else 1 << 20), held


class OpenConnections:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limit: int,
        pause_accepting: Callable[[], None],
        resume_accepting: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.clock = loop.time  # bound once: read for every proxied request
        self.limit = limit  # worker_connections
        self.members: set[ClientConnection] = set()
        self.pause_accepting = pause_accepting
        self.resume_accepting = resume_accepting
        # accept() stops while open descriptors come near the limit (see admit)
        self.accept_paused = False
        self.descriptor_limit, self.descriptors_at_start = descriptor_budget()
        self.last_pause_warning = -1.0
        self.last_full_warning = -1.0
        self.admitted = 0  # a connection's serial number ($connection) is the count at its turn
        self.draining = False
        self.drained = asyncio.Event()  # set when the last connection closes while draining
        # a new connection's client_header_timeout until its first bytes: nearly every client
        # sends at once, so one coarse shared timer spares each connection a loop timer
        self.awaiting_first_bytes: CoarseTimeouts[ClientConnection] = CoarseTimeouts(
            loop, FIRST_BYTES_RESOLUTION, lambda conn: conn.close()
        )

    def __len__(self) -> int:
        return len(self.members)

    def admit(self, conn: "ClientConnection") -> bool:
        """worker_connections: a new connection past the limit first makes idle ones close
        (kept-alive or silent, as nginx reuses its idle connections); if none is idle it is
        refused, and that is logged at most once a second."""
        members = self.members
        if len(members) >= self.limit:
            for other in [c for c in members if c.idle()][:IDLE_CLOSED_AT_ONCE]:
                other.close()  # connection_lost takes it out of the set
                members.discard(other)
            if len(members) >= self.limit:
                now = self.loop.time()
                if now - self.last_full_warning >= 1.0:
                    self.last_full_warning = now
                    log.warning("%d worker_connections are not enough", self.limit)
                return False
        members.add(conn)
        self.admitted += 1
        if not self.accept_paused and self._near_descriptor_limit():
            self._pause()
        return True

    def closed(self, conn: "ClientConnection") -> None:
        self.members.discard(conn)
        if self.accept_paused and not self.draining and not self._near_descriptor_limit():
            self.accept_paused = False
            self.resume_accepting()
        if self.draining and not self.members:
            self.drained.set()

    def _near_descriptor_limit(self) -> bool:
        """Each connection holds a descriptor and may need one more for its upstream: accept()
        stops while what is left would not cover a burst of upstream connections, so running
        out is never met in accept() (where the kernel would make the client wait for nothing,
        or libuv would accept and close) and seldom in connect()."""
        limit = self.descriptor_limit
        margin = max(16, limit // 8)
        return self.descriptors_at_start + len(self.members) + margin >= limit

    def _pause(self) -> None:
        self.accept_paused = True
        self.pause_accepting()
        now = self.loop.time()
        if now - self.last_pause_warning >= 1.0:
            self.last_pause_warning = now
            log.warning(
                "accept() paused: %d connections come near the open file limit %d",
                len(self.members),
                self.descriptor_limit,
            )

    # stopping
    def drain(self) -> None:
        """From now on the last connection to close sets `drained`."""
        self.draining = True
        if not self.members:
            self.drained.set()

    def close_idle(self) -> None:
        for conn in list(self.members):
            if conn.idle():
                conn.close()

    def abort_all(self) -> None:
        self.awaiting_first_bytes.close()
        for conn in list(self.members):
            conn.abort()
