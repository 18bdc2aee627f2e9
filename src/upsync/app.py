"""The running proxy: upstream groups, routing tables and listeners built from a Config, swapped
whole on reload, and the graceful and immediate ways to stop."""

import asyncio
import logging
import os
import resource
from collections.abc import Callable

from upsync.config.model import Config
from upsync.generation import BindKey, Generation, bind_keys
from upsync.listeners import Listener, bind
from upsync.logs import AccessLogFiles
from upsync.proxy.client import ClientConnection
from upsync.proxy.timer import CoarseTimeouts
from upsync.upstream.group import UpstreamGroup
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
# how late a silent new connection's client_header_timeout may fire
FIRST_BYTES_RESOLUTION = 0.25


class App:
    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
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
    def _apply(self, config: Config) -> list[UpstreamSync]:
        """Build the runtime for a config; returns the registry syncs that are new."""
        groups: dict[str, UpstreamGroup] = {}
        new_syncs: list[UpstreamSync] = []
        for name, upstream in config.upstreams.items():
            group = self.current.groups.get(name)
            old_sync = group.sync if group is not None else None
            if group is not None and group.config.method == upstream.method:
                group.reconfigure(upstream)
                if upstream.sync_spec is None or old_sync is None:
                    group.replace(upstream.servers)
                    group.source = "static"
            else:
                group = UpstreamGroup(upstream)
            spec = upstream.sync_spec
            if old_sync is not None and (spec != old_sync.spec or group.sync is not old_sync):
                self._retire(old_sync)
                group.sync = None
            if spec is not None and group.sync is None:
                if old_sync is not None and old_sync.group is not group:
                    group.replace(old_sync.group.specs())  # same registry, new balancer
                new_syncs.append(UpstreamSync(group, spec))
            groups[name] = group
        for name, old in self.current.groups.items():
            if name not in groups:
                old.pool.close_all()
                if old.sync is not None:
                    self._retire(old.sync)
        self.config = config
        previous, self.current = self.current, Generation(config, groups, self.access_logs)
        previous.retired = True
        return new_syncs

    def _retire(self, sync: UpstreamSync) -> None:
        task = self.loop.create_task(sync.stop())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def start(self) -> None:
        """Pull every synced upstream once (StartupError if a strong dependency fails), then
        listen, then follow the registries."""
        syncs, self.pending_syncs = self.pending_syncs, []
        await asyncio.gather(*(sync.initial_load() for sync in syncs))
        await self._sync_listeners()
        for sync in syncs:
            sync.start()

    def syncs(self) -> list[UpstreamSync]:
        return [group.sync for group in self.current.groups.values() if group.sync is not None]

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
                    bound[key] = Listener(self.loop, bind(*key), self._factory(key))
        except OSError:
            for listener in bound.values():
                listener.close()
            raise
        self.listeners.update(bound)
        if not self.accept_paused:
            for listener in bound.values():
                await listener.serve()

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
        new_syncs = self._apply(config)
        for sync in new_syncs:
            # no blocking pull on reload: the dump (or static list) serves until the watch's
            # first read, which comes at once
            sync.load_fallback()
            sync.start()
        await self._sync_listeners()
        self.access_logs.close()
        log.info("configuration reloaded from %s", config.path)

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

    async def quit_gracefully(self) -> None:
        """SIGQUIT: stop accepting, let in-flight requests finish, close idle connections."""
        self.stop_listening()
        self.draining = True
        for conn in list(self.connections):
            if conn.idle():
                conn.close()
        if self.connections:
            await self.drained.wait()
        self.shutdown()

    async def close(self) -> None:
        await asyncio.gather(*(sync.stop() for sync in self.syncs()), *self.background)

    def shutdown(self) -> None:
        self.stop_listening()
        self.awaiting_first_bytes.close()
        for conn in list(self.connections):
            conn.abort()
        for group in self.current.groups.values():
            group.pool.close_all()
        self.access_logs.close()
        self.stopped.set()


__all__ = ["App"]
