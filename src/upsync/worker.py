"""A worker process: serves the master's listening sockets on one configuration generation, with
the server lists the master's registry syncs send it. It never reloads: a reload starts new
workers and retires this one, which answers what its connections have received and exits."""

import asyncio
import logging
import os
import signal
import socket
from typing import Any

import uvloop
from setproctitle import setproctitle

from upsync.app import App
from upsync.config.model import Config, ServerSpec
from upsync.generation import BindKey
from upsync.logs import setup_error_log
from upsync.process import open_file_budget, settle_heap
from upsync.upstream.group import UpstreamGroup
from upsync.upstream.mirror import ListMirror, ListUpdate
from upsync.wire import HEADER, FrameReader, frame

log = logging.getLogger("upsync")

# a retiring worker leaves a keep-alive connection idle this long before closing it: its
# client may be sending the next request meanwhile, which is then answered, not lost
RETIRE_IDLE_GRACE = 1.0


def apply_list(
    groups: dict[str, UpstreamGroup],
    name: str,
    specs: tuple[ServerSpec, ...],
    source: str,
    status: dict[str, object],
) -> None:
    group = groups.get(name)
    if group is None or group.config.sync_spec is None:
        return  # an upstream this generation does not sync (a reload changed it)
    group.replace(specs)  # in the master's order, so every worker shows the same list
    group.source = source
    group.reported_status = status


class MasterChannel(asyncio.Protocol):
    """This worker's end of its socket to the master."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.quitting: asyncio.Task[None] | None = None
        self.lists = ListMirror()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, message: object) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(message))

    def data_received(self, data: bytes) -> None:
        for message in self.reader.feed(data):
            self.handle(message)

    def handle(self, message: Any) -> None:
        """What the master says: a synced upstream's list (with its registry state), the
        registry state alone, quit gracefully (with the grace idle connections get), stop at
        once, reopen the logs."""
        kind = message[0]
        if kind == "list":
            self.take_list(message[1], message[2], message[3])
        elif kind == "status":
            group = self.app.upstreams.groups.get(message[1])
            if group is not None:
                group.reported_status = message[2]
        elif kind == "reload":
            self.reload(message[1])
        elif kind == "quit":
            self.quit(message[1])
        elif kind == "stop":
            self.app.shutdown()
        elif kind == "reopen":
            self.app.access_logs.close()

    def take_list(self, update: ListUpdate, source: str, status: dict[str, object]) -> None:
        specs = self.lists.apply(update)
        if specs is None:
            log.warning(
                'worker %d lost track of upstream "%s"; asking for its list', os.getpid(),
                update.upstream,
            )
            self.send(("resend", update.upstream))
            return
        apply_list(self.app.upstreams.groups, update.upstream, specs, source, status)

    def reload(self, config: Config) -> None:
        """Applied before the next message is read: the lists that follow it are for the
        upstreams of this configuration."""
        try:
            self.app.reconfigure(config)
        except Exception:
            log.exception("worker %d cannot apply the new configuration; it quits", os.getpid())
            self.send(("reloaded", False))
            self.quit(RETIRE_IDLE_GRACE)
            return
        self.send(("reloaded", True))

    def quit(self, idle_grace: float) -> None:
        if self.quitting is None:
            self.quitting = asyncio.ensure_future(self.app.quit_gracefully(idle_grace))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.app.stopped.is_set():
            log.error("the master process is gone; worker %d quits", os.getpid())
            self.quit(0.0)


def read_first_frame(channel: socket.socket) -> Any:
    """The init message, read before the event loop runs (what follows it stays queued in the
    socket for the loop)."""

    def exactly(size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = channel.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the master closed the channel")
            data += chunk
        return bytes(data)

    (size,) = HEADER.unpack(exactly(HEADER.size))
    return FrameReader().feed(HEADER.pack(size) + exactly(size))[0]


async def _serve(
    config: Config,
    init: dict[str, Any],
    sockets: dict[BindKey, socket.socket],
    channel: socket.socket,
) -> int:
    loop = asyncio.get_running_loop()
    app = App(config, loop, inherited=sockets)
    master = MasterChannel(app)
    for update, source, status in init["lists"].values():
        master.take_list(update, source, status)
    loop.add_signal_handler(signal.SIGTERM, app.shutdown)
    loop.add_signal_handler(signal.SIGINT, app.shutdown)
    loop.add_signal_handler(signal.SIGQUIT, lambda: master.quit(0.0))
    loop.add_signal_handler(signal.SIGUSR1, app.access_logs.close)
    await app.start()
    await loop.create_unix_connection(lambda: master, sock=channel)
    settle_heap()
    master.send(("ready", os.getpid()))
    await app.stopped.wait()
    await app.close()
    return 0


def main(channel_fd: int, listen_fds: list[int]) -> int:
    """A worker's life, in a process the spawner has just forked."""
    setproctitle("upsync: worker process")
    channel = socket.socket(fileno=channel_fd)
    _, init = read_first_frame(channel)
    config: Config = init["config"]
    keys: list[BindKey] = init["listen"]
    sockets = {key: socket.socket(fileno=fd) for key, fd in zip(keys, listen_fds, strict=True)}
    for sock in sockets.values():
        sock.setblocking(False)
    channel.setblocking(False)
    setup_error_log(config.main.error_log, config.main.error_log_level)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads are the master's
    open_file_budget(config)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(config, init, sockets, channel))
