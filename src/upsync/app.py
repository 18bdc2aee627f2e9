"""The running proxy: upstream groups, routing tables and listeners built from a Config, swapped
whole on reload, and the graceful and immediate ways to stop."""

import asyncio
import logging
import socket
from collections.abc import Callable

from upsync.admin.show import show_answer
from upsync.config.model import Config, LocationConfig, ProxyPass
from upsync.logs import AccessLogFiles
from upsync.proxy.client import ClientConnection
from upsync.proxy.exchange import ProxyExchange, ProxyPlan
from upsync.proxy.request import Request
from upsync.proxy.routing import ServerTable
from upsync.proxy.timer import CoarseTimeouts
from upsync.upstream.group import UpstreamGroup
from upsync.upstream.sync import UpstreamSync

log = logging.getLogger("upsync")

BindKey = tuple[str, int]
# how many idle connections one new connection past worker_connections may close (nginx: 32)
IDLE_CLOSED_AT_ONCE = 32
# how late a silent new connection's client_header_timeout may fire
FIRST_BYTES_RESOLUTION = 0.25


def _bind_keys(config: Config) -> dict[BindKey, list[int]]:
    """Which addresses to bind, and the server blocks (by index) behind each. A wildcard
    listen on a port takes the whole port, as nginx binds *:port once."""
    by_key: dict[BindKey, list[int]] = {}
    for index, block in enumerate(config.servers):
        for listen in block.listens:
            key = (listen.host, listen.port)
            indexes = by_key.setdefault(key, [])
            if index not in indexes:
                indexes.append(index)
    wildcard_ports = {port for host, port in by_key if host == ""}
    merged: dict[BindKey, list[int]] = {}
    for (host, port), indexes in by_key.items():
        key = ("", port) if port in wildcard_ports else (host, port)
        target = merged.setdefault(key, [])
        target.extend(i for i in indexes if i not in target)
    return merged


class App:
    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.config = config
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.listeners: dict[BindKey, asyncio.Server] = {}
        self.tables: dict[BindKey, ServerTable] = {}
        self.groups: dict[str, UpstreamGroup] = {}
        self.plans: dict[int, ProxyPlan] = {}
        self.access_logs = AccessLogFiles()
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
            group = self.groups.get(name)
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
        for name, old in self.groups.items():
            if name not in groups:
                old.pool.close_all()
                if old.sync is not None:
                    self._retire(old.sync)
        self.groups = groups
        self.config = config
        self.plans = {}
        keys = _bind_keys(config)
        self.tables = {
            key: ServerTable([config.servers[i] for i in indexes], key[1], key[0])
            for key, indexes in keys.items()
        }
        for server in config.servers:
            for location in (*server.locations, server.fallback):
                if isinstance(location.handler, ProxyPass):
                    self.plans[id(location)] = ProxyPlan(location, location.handler)
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
        return [group.sync for group in self.groups.values() if group.sync is not None]

    async def _sync_listeners(self) -> None:
        await self._bind_new(set(self.tables))
        for key in list(self.listeners):
            if key not in self.tables:
                self.listeners.pop(key).close()

    async def _bind_new(self, keys: set[BindKey]) -> None:
        """Listen on the addresses not listened on yet; if one cannot be bound, none of them is
        kept (OSError), so a failed reload leaves the running listeners as they were."""
        bound: dict[BindKey, asyncio.Server] = {}
        try:
            for key in keys:
                if key not in self.listeners:
                    bound[key] = await self._listen(key)
        except OSError:
            for server in bound.values():
                server.close()
            raise
        self.listeners.update(bound)

    async def _listen(self, key: BindKey) -> asyncio.Server:
        host, port = key
        # a connection takes the routing table and proxy plans of the moment it is accepted
        # and keeps them across reloads
        factory: Callable[[], ClientConnection] = lambda: ClientConnection(  # noqa: E731
            self, self.tables[key], self.plans
        )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return await self.loop.create_server(
            factory,
            host or "0.0.0.0",
            port,
            family=family,
            reuse_address=True,
            backlog=511,
        )

    async def reload(self, config: Config) -> None:
        """Apply a new configuration; OSError when one of its addresses cannot be bound, and
        then the running configuration stays whole (as nginx keeps its old workers)."""
        await self._bind_new(set(_bind_keys(config)))
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
        return True

    def connection_closed(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if self.draining and not self.connections:
            self.drained.set()

    # requests
    def start_exchange(self, client: ClientConnection, req: Request) -> ProxyExchange | None:
        location = req.location
        assert location is not None
        plan = client.plans[id(location)]
        uri_override: str | None = None
        if plan.upstream is not None:
            name = plan.upstream
        else:
            assert plan.target is not None
            rendered = plan.target.render(req)
            name, slash, rest = rendered.partition("/")
            if slash:
                uri_override = "/" + rest
        group = self.groups.get(name)
        if group is None:
            log.error(
                'no upstream "%s" for "%s" (proxy_pass variables resolve to upstream names only)',
                name,
                req.target,
            )
            client.send_error(502)
            return None
        req.proxy_host = name
        return ProxyExchange(client, req, plan, group, uri_override)

    def can_stream_body(self, client: ClientConnection, req: Request) -> bool:
        """A chunked body of unknown length can only be streamed to an HTTP/1.1 upstream; for
        proxy_http_version 1.0 it is read whole first (up to client_max_body_size)."""
        if req.content_length is not None or req.location is None:
            return True
        plan = client.plans.get(id(req.location))
        return plan is None or plan.version == b"1.1"

    def show_upstreams(self, req: Request) -> tuple[int, bytes, bytes]:
        explicit = [g for g in self.groups.values() if not g.config.implicit]
        return show_answer(explicit, req.query, req.header(b"accept"), self.loop.time())

    def log_access(self, req: Request) -> None:
        location: LocationConfig | None = req.location
        if location is None:
            return
        access_log = location.access_log
        if not access_log.path or access_log.format is None:
            return
        try:
            line = access_log.format.render_for_log(req)
            self.access_logs.get(access_log.path).write(line + "\n")
        except OSError as exc:
            log.error("cannot write access log %s: %s", access_log.path, exc)

    # stopping
    def stop_listening(self) -> None:
        for server in self.listeners.values():
            server.close()
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
        for group in self.groups.values():
            group.pool.close_all()
        self.access_logs.close()
        self.stopped.set()


__all__ = ["App"]
