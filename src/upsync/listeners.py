"""Listening sockets that upsync owns, served through uvloop, and that can stop accepting for a
while without losing anyone: the event loop serves a duplicate of the socket, so closing that
server stops accept() while the kernel goes on queueing connections on the socket kept here (up
to its backlog); serving a fresh duplicate picks them up."""

import asyncio
import socket
from collections.abc import Callable

BACKLOG = 511  # nginx's default


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host or "0.0.0.0", port), family=family, backlog=BACKLOG)
    sock.setblocking(False)
    return sock


class Listener:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.factory = factory
        self.server: asyncio.Server | None = None
        self.wanted = False  # whether it should be accepting
        self.starting = False

    async def serve(self) -> None:
        self.wanted = True
        if self.server is not None or self.starting:
            return
        self.starting = True
        try:
            server = await self.loop.create_server(self.factory, sock=self.sock.dup())
        finally:
            self.starting = False
        if self.wanted and self.server is None:
            self.server = server
        else:
            server.close()  # paused (or closed) meanwhile

    def pause(self) -> None:
        """Stop accepting; connections wait in the kernel's queue meanwhile."""
        self.wanted = False
        if self.server is not None:
            self.server.close()
            self.server = None

    def close(self) -> None:
        self.pause()
        self.sock.close()
