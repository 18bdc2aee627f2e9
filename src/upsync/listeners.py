"""Listening sockets that upsync owns, served through uvloop, and that can stop accepting for a
while without losing anyone: the event loop serves a duplicate of the socket, so closing that
server stops accept() while the kernel goes on queueing connections on the socket kept here (up
to its backlog); serving a fresh duplicate picks them up."""

import asyncio
import errno
import os
import socket
import stat
from collections.abc import Callable

BACKLOG = 511  # nginx's default


def bind(host: str, port: int) -> socket.socket:
    if host.startswith("unix:"):
        return _bind_unix(host[5:])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host or "0.0.0.0", port), family=family, backlog=BACKLOG)
    sock.setblocking(False)
    return sock


def _bind_unix(path: str) -> socket.socket:
    """A unix socket; one left by an earlier run (a socket file nobody listens on) is removed
    first, the way nginx's binary upgrade leaves none behind."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale: nobody accepts on it
            else:
                raise OSError(errno.EADDRINUSE, f"{path} is in use")
            finally:
                probe.close()
        sock.bind(path)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
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
