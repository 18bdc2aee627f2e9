"""The running proxy: upstream groups, routing tables and listeners built from a Config, swapped
whole on reload, and the graceful and immediate ways to stop."""

import asyncio
import logging
import os
import resource
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from upsync.config.model import Config
from upsync.generation import BindKey, Generation, bind_keys
from upsync.listeners import Listener, bind
from upsync.logs import AccessLogFiles
from upsync.proxy.client import ClientConnection
from upsync.proxy.timer import CoarseTimeouts
from upsync.upstream.upstreams import Upstreams

if TYPE_CHECKING:
    from upsync.upstream.sync import UpstreamSync

log = logging.getLogger("upsync")

# how many idle connections one new connection past worker_connections may close (nginx: 32)
IDLE_CLOSED_AT_ONCE = 32


def descriptor_budget() -> tuple[int, int]:
    """The open-file limit, and how many descriptors the process holds before any connection."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        held = len(os.listdir("/proc/self/fd"))
    except OSError:
        held = 32
    return (soft if soft != resource.RLIM_INFINITY else 1 << 20), held


# the connections of a configuration that a reload replaced close over this long, each after
# the first answer past its own moment in it (see Generation.retire)
DRAIN_WINDOW = 0.5
# how late a silent new connection's client_header_timeout may fire
FIRST_BYTES_RESOLUTION = 0.25


class App:
    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        inherited: dict[BindKey, socket.socket] | None = None,
    ) -> None:
        self.loop = loop
        self.config = config
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.listeners: dict[BindKey, Listener] = {}
        # accept() stops while open descriptors come near the limit (see admit)
        self.accept_paused = False
        self.descriptor_limit, self.descriptors_at_start = descriptor_budget()
        self.last_pause_warning = -1.0
        self.access_logs = AccessLogFiles()
        # sockets bound by the master, when this is one of its workers
        self.inherited = inherited
        self.upstreams = Upstreams(follow_registries=inherited is None)
        # what new connections are accepted under; older ones keep theirs
        self.current = Generation(config, {}, self.access_logs)
        self.stopped = asyncio.Event()
        self.background: set[asyncio.Task[None]] = set()
        self.drained = asyncio.Event()  # set when the last connection closes while draining
        self.last_full_warning = -1.0
        # a new connection's client_header_timeout until its first bytes: nearly every client
        # sends at once, so one coarse shared timer spares each connection a loop timer
        self.awaiting_first_bytes: CoarseTimeouts[ClientConnection] = CoarseTimeouts(
            loop, FIRST_BYTES_RESOLUTION, lambda conn: conn.close()
        )
        self.pending_syncs = self._apply(config)

    # building
    def _apply(self, config: Config) -> list["UpstreamSync"]:
        """Build the runtime for a config; returns the registry syncs that are new."""
        new_syncs = self.upstreams.apply(config)
        self.config = config
        previous = self.current
        self.current = Generation(config, self.upstreams.groups, self.access_logs)
        previous.retire(self.loop.time(), DRAIN_WINDOW)
        return new_syncs

    async def start(self) -> None:
        """Pull every synced upstream once (StartupError if a strong dependency fails), then
        listen, then follow the registries."""
        syncs, self.pending_syncs = self.pending_syncs, []
        await asyncio.gather(*(sync.initial_load() for sync in syncs))
        await self._sync_listeners()
        for sync in syncs:
            sync.start()

    def syncs(self) -> list["UpstreamSync"]:
        return self.upstreams.syncs()

    async def _sync_listeners(self) -> None:
        tables = self.current.tables
        await self._bind_new(set(tables))
        for key in list(self.listeners):
            if key not in tables:
                self.listeners.pop(key).close()

    async def _bind_new(self, keys: set[BindKey]) -> None:
        """Listen on the addresses not listened on yet; if one cannot be bound, none of them is
        kept (OSError), so a failed reload leaves the running listeners as they were."""
        bound: dict[BindKey, Listener] = {}
        try:
            for key in keys:
                if key not in self.listeners:
                    bound[key] = Listener(self.loop, self._socket(key), self._factory(key))
        except OSError:
            for listener in bound.values():
                listener.close()
            raise
        self.listeners.update(bound)
        if not self.accept_paused:
            for listener in bound.values():
                await listener.serve()

    def _socket(self, key: BindKey) -> socket.socket:
        if self.inherited is None:
            return bind(*key)
        return self.inherited[key]  # the master bound every address of this configuration

    def _factory(self, key: BindKey) -> Callable[[], ClientConnection]:
        bound_under = self.current

        def factory() -> ClientConnection:
            # a connection keeps the generation it is accepted under, across reloads; one
            # accepted as its listener is being closed by a reload keeps the listener's
            generation = self.current
            table = generation.tables.get(key)
            if table is None:
                generation = bound_under
                table = generation.tables[key]
            return ClientConnection(self, generation, table)

        return factory

    async def reload(self, config: Config) -> None:
        """Apply a new configuration; OSError when one of its addresses cannot be bound, and
        then the running configuration stays whole (as nginx keeps its old workers)."""
        await self._bind_new(set(bind_keys(config)))
        for sync in self.reconfigure(config):
            sync.start_after_reload()
        await self._sync_listeners()
        log.info("configuration reloaded from %s", config.path)

    def reconfigure(self, config: Config) -> list["UpstreamSync"]:
        """A reload once every address it needs is bound (a worker's, on the master's word,
        needs none): the new configuration takes the new connections at once, open ones
        finish on theirs; returns the registry syncs that are new."""
        new_syncs = self._apply(config)
        self.access_logs.close()
        return new_syncs

    def admit(self, conn: ClientConnection) -> bool:
        """worker_connections: a new connection past the limit first makes idle ones close
        (kept-alive or silent, as nginx reuses its idle connections); if none is idle it is
        refused, and that is logged at most once a second."""
        limit = self.config.main.worker_connections
        if len(self.connections) >= limit:
            idle = [c for c in self.connections if c.idle()][:IDLE_CLOSED_AT_ONCE]
            for other in idle:
                other.close()  # connection_lost takes it out of the set
                self.connections.discard(other)
            if len(self.connections) >= limit:
                now = self.loop.time()
                if now - self.last_full_warning >= 1.0:
                    self.last_full_warning = now
                    log.warning("%d worker_connections are not enough", limit)
                return False
        self.connections.add(conn)
        if self._near_descriptor_limit() and not self.accept_paused:
            self._pause_accepting()
        return True

    def _near_descriptor_limit(self) -> bool:
        """Each connection holds a descriptor and may need one more for its upstream: accept()
        stops while what is left would not cover a burst of upstream connections, so running
        out is never met in accept() (where the kernel would make the client wait for nothing,
        or libuv would accept and close) and seldom in connect()."""
        limit = self.descriptor_limit
        margin = max(16, limit // 8)
        return self.descriptors_at_start + len(self.connections) + margin >= limit

    def _pause_accepting(self) -> None:
        self.accept_paused = True
        for listener in self.listeners.values():
            listener.pause()
        now = self.loop.time()
        if now - self.last_pause_warning >= 1.0:
            self.last_pause_warning = now
            log.warning(
                "accept() paused: %d connections come near the open file limit %d",
                len(self.connections),
                self.descriptor_limit,
            )

    def _resume_accepting(self) -> None:
        self.accept_paused = False
        for listener in self.listeners.values():
            task = self.loop.create_task(listener.serve())
            self.background.add(task)
            task.add_done_callback(self.background.discard)

    def connection_closed(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if self.accept_paused and not self.draining and not self._near_descriptor_limit():
            self._resume_accepting()
        if self.draining and not self.connections:
            self.drained.set()

    # stopping
    def stop_listening(self) -> None:
        for listener in self.listeners.values():
            listener.close()
        self.listeners.clear()

    async def quit_gracefully(self, idle_grace: float = 0.0) -> None:
        """Stop accepting, answer what every connection has already received (the last answer
        says Connection: close), close idle connections, and stop once none is left, or at
        worker_shutdown_timeout. Idle ones close at once on SIGQUIT, as in nginx; a worker
        retired by a reload gives them `idle_grace` first, since a keep-alive client may be
        sending its next request that very moment, and that one is then answered instead of
        lost with the connection."""
        self.stop_listening()
        # a connection accepted in the same loop iteration is announced (connection_made) by
        # a callback still queued: let it join the connections to wait for, or it would be
        # dropped with the process
        await asyncio.sleep(0)
        self.draining = True
        self.current.retire(self.loop.time(), DRAIN_WINDOW if idle_grace > 0 else 0.0)
        timeout = self.config.main.worker_shutdown_timeout
        if timeout > 0:
            self.loop.call_later(timeout, self._shutdown_timed_out)
        if idle_grace > 0:
            self.loop.call_later(idle_grace, self._close_idle)
        else:
            self._close_idle()
        if self.connections:
            await self.drained.wait()
        self.shutdown()

    def _close_idle(self) -> None:
        for conn in list(self.connections):
            if conn.idle():
                conn.close()

    def _shutdown_timed_out(self) -> None:
        if self.connections:
            log.info("worker_shutdown_timeout: closing %d connections", len(self.connections))
        self.drained.set()

    async def close(self) -> None:
        await asyncio.gather(self.upstreams.close(), *self.background)

    def shutdown(self) -> None:
        self.stop_listening()
        self.awaiting_first_bytes.close()
        for conn in list(self.connections):
            conn.abort()
        self.upstreams.close_pools()
        self.access_logs.close()
        self.stopped.set()


__all__ = ["App"]
