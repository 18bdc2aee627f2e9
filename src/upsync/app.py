"""The running proxy: upstream groups, routing tables and listeners built from a Config, swapped
whole on reload, and the graceful and immediate ways to stop."""

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from upsync.config.model import Config
from upsync.generation import BindKey, Generation, bind_keys
from upsync.listeners import Listener, bind
from upsync.logs import AccessLogFiles
from upsync.proxy.client import ClientConnection
from upsync.proxy.connections import OpenConnections
from upsync.upstream.upstreams import Upstreams

if TYPE_CHECKING:
    from upsync.upstream.sync import UpstreamSync

log = logging.getLogger("upsync")

# the connections of a configuration that a reload replaced close over this long, each after
# the first answer past its own moment in it (see Generation.retire)
DRAIN_WINDOW = 0.5


class App:
    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        inherited: dict[BindKey, socket.socket] | None = None,
    ) -> None:
        self.loop = loop
        self.config = config
        self.listeners: dict[BindKey, Listener] = {}
        self.connections = OpenConnections(
            loop, config.main.worker_connections, self._pause_accepting, self._resume_accepting
        )
        self.access_logs = AccessLogFiles()
        # sockets bound by the master, when this is one of its workers
        self.inherited = inherited
        self.upstreams = Upstreams(follow_registries=inherited is None)
        # what new connections are accepted under; older ones keep theirs
        self.current = Generation(config, {}, self.access_logs)
        self.stopped = asyncio.Event()
        self.background: set[asyncio.Task[None]] = set()
        self.pending_syncs = self._apply(config)

    # building
    def _apply(self, config: Config) -> list["UpstreamSync"]:
        """Build the runtime for a config; returns the registry syncs that are new."""
        new_syncs = self.upstreams.apply(config)
        self.config = config
        self.connections.limit = config.main.worker_connections
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
        if not self.connections.accept_paused:
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
            return ClientConnection(self.connections, generation, table)

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

    def _pause_accepting(self) -> None:
        for listener in self.listeners.values():
            listener.pause()

    def _resume_accepting(self) -> None:
        for listener in self.listeners.values():
            task = self.loop.create_task(listener.serve())
            self.background.add(task)
            task.add_done_callback(self.background.discard)

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
        self.connections.drain()
        self.current.retire(self.loop.time(), DRAIN_WINDOW if idle_grace > 0 else 0.0)
        timeout = self.config.main.worker_shutdown_timeout
        if timeout > 0:
            self.loop.call_later(timeout, self._shutdown_timed_out)
        if idle_grace > 0:
            self.loop.call_later(idle_grace, self.connections.close_idle)
        else:
            self.connections.close_idle()
        await self.connections.drained.wait()
        self.shutdown()

    def _shutdown_timed_out(self) -> None:
        if len(self.connections):
            log.info("worker_shutdown_timeout: closing %d connections", len(self.connections))
        self.connections.drained.set()

    async def close(self) -> None:
        await asyncio.gather(self.upstreams.close(), *self.background)

    def shutdown(self) -> None:
        self.stop_listening()
        self.connections.abort_all()
        self.upstreams.close_pools()
        self.access_logs.close()
        self.stopped.set()


__all__ = ["App"]
