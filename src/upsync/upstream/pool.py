"""nginx's `keepalive N` cache: at most N idle upstream connections per upstream, least recently
used evicted first, each dropped after `keepalive_timeout` idle, `keepalive_requests` uses or
`keepalive_time` of life."""

import asyncio

from upsync.upstream.peer import Peer


class PooledConnection(asyncio.Protocol):
    """What the pool keeps: a connection to one peer. A base class rather than a structural
    protocol, so the compiled pool reads these fields directly."""

    __slots__ = ("born", "idle_since", "peer", "requests")

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.idle_since = 0.0
        self.born = 0.0  # loop time of its connect, set by whoever connected it
        self.requests = 0

    def close(self) -> None:
        raise NotImplementedError


class KeepalivePool:
    def __init__(
        self, capacity: int, timeout: float, max_requests: int, max_age: float = 3600.0
    ) -> None:
        self.capacity = capacity
        self.timeout = timeout
        self.max_requests = max_requests
        self.max_age = max_age
        # slots: the first `count` hold the idle connections, least recently idle first; the
        # rest are None, kept so the list does not shrink and grow again (a reallocation each
        # way) as a connection leaves and comes back for every request
        self.idle: list[PooledConnection | None] = []
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def take(self, peer: Peer, now: float) -> PooledConnection | None:
        idle = self.idle
        index = self.count - 1
        while index >= 0:
            conn = idle[index]
            assert conn is not None
            if conn.peer is peer:
                self._remove_at(index)
                if now - conn.idle_since <= self.timeout:
                    return conn
                conn.close()
            index -= 1
        return None

    def put(self, conn: PooledConnection, now: float) -> bool:
        """Keep an idle connection; False when the caller must close it instead."""
        if (
            not self.capacity
            or conn.requests >= self.max_requests
            or conn.peer.retired
            or now - conn.born >= self.max_age
        ):
            return False
        conn.idle_since = now
        idle = self.idle
        count = self.count
        if count < len(idle):
            idle[count] = conn
        else:
            idle.append(conn)
        self.count = count = count + 1
        if count > self.capacity:
            oldest = idle[0]
            assert oldest is not None
            self._remove_at(0)
            oldest.close()
        return True

    def _remove_at(self, index: int) -> None:
        idle = self.idle
        last = self.count - 1
        if index < last:
            del idle[index]  # the later ones move down a slot...
            idle.append(None)  # ...and the list keeps its length
        else:
            idle[index] = None
        self.count = last

    def connections(self) -> list[PooledConnection]:
        """The idle connections, least recently idle first."""
        return [conn for conn in self.idle[: self.count] if conn is not None]

    def discard(self, conn: PooledConnection) -> None:
        for index in range(self.count):
            if self.idle[index] is conn:
                self._remove_at(index)
                return

    def close_peer(self, peer: Peer) -> None:
        for conn in [c for c in self.connections() if c.peer is peer]:
            self.discard(conn)
            conn.close()

    def close_all(self) -> None:
        idle = self.connections()
        self.idle = []
        self.count = 0
        for conn in idle:
            conn.close()
