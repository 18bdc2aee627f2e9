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
        self.idle: list[PooledConnection] = []

    def take(self, peer: Peer, now: float) -> PooledConnection | None:
        idle = self.idle
        for index in range(len(idle) - 1, -1, -1):
            conn = idle[index]
            if conn.peer is not peer:
                continue
            idle.pop(index)
            if now - conn.idle_since > self.timeout:
                conn.close()
                continue
            return conn
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
        self.idle.append(conn)
        if len(self.idle) > self.capacity:
            self.idle.pop(0).close()
        return True

    def discard(self, conn: PooledConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def close_peer(self, peer: Peer) -> None:
        for conn in [c for c in self.idle if c.peer is peer]:
            self.idle.remove(conn)
            conn.close()

    def close_all(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()
