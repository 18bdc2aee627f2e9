"""The running proxy: upstream groups, routing tables and listeners built from a Config, swapped
whole on reload, and the graceful and immediate ways to stop."""

import asyncio
import logging
import socket
from collections.abc import Callable

from upsync.admin.show import parse_show_query, show_json, show_text
from upsync.config.model import Config, Listen, LocationConfig, ProxyPass
from upsync.logs import AccessLogFiles
from upsync.proxy.client import ClientConnection
from upsync.proxy.exchange import ProxyExchange, ProxyPlan
from upsync.proxy.request import Request
from upsync.proxy.routing import ServerTable
from upsync.upstream.group import UpstreamGroup

log = logging.getLogger("upsync")

BindKey = tuple[str, int]


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
        self._apply(config)

    # building
    def _apply(self, config: Config) -> None:
        groups: dict[str, UpstreamGroup] = {}
        for name, upstream in config.upstreams.items():
            group = self.groups.get(name)
            if group is not None and group.config.method == upstream.method:
                group.config = upstream
                group.replace(upstream.servers)
            else:
                group = UpstreamGroup(upstream)
            groups[name] = group
        for name, old in self.groups.items():
            if name not in groups:
                old.pool.close_all()
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

    async def start(self) -> None:
        await self._sync_listeners()

    async def _sync_listeners(self) -> None:
        for key in list(self.listeners):
            if key not in self.tables:
                self.listeners.pop(key).close()
        for key in self.tables:
            if key not in self.listeners:
                self.listeners[key] = await self._listen(key)

    async def _listen(self, key: BindKey) -> asyncio.Server:
        host, port = key
        factory: Callable[[], ClientConnection] = lambda: ClientConnection(self, self.tables[key])  # noqa: E731
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
        self._apply(config)
        await self._sync_listeners()
        self.access_logs.close()
        log.info("configuration reloaded from %s", config.path)

    # requests
    def start_exchange(self, client: ClientConnection, req: Request) -> ProxyExchange | None:
        location = req.location
        assert location is not None
        plan = self.plans[id(location)]
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

    def show_upstreams(self, req: Request) -> tuple[int, bytes, bytes]:
        name, as_json = parse_show_query(req.query)
        accept = req.header(b"accept")
        if accept is not None and b"application/json" in accept:
            as_json = True
        explicit = [g for g in self.groups.values() if not g.config.implicit]
        if name is not None:
            explicit = [g for g in explicit if g.name == name]
            if not explicit:
                body = f"upstream not found: {name}\n"
                return 404, b"text/plain", body.encode()
        if as_json:
            return 200, b"application/json", show_json(explicit, self.loop.time())
        return 200, b"text/plain", show_text(explicit).encode()

    def log_access(self, req: Request) -> None:
        location: LocationConfig | None = req.location
        if location is None:
            return
        access_log = location.access_log
        if not access_log.path or access_log.format is None:
            return
        try:
            self.access_logs.get(access_log.path).write(access_log.format.render(req) + "\n")
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
        while self.connections:
            await asyncio.sleep(0.05)
        self.shutdown()

    def shutdown(self) -> None:
        self.stop_listening()
        for conn in list(self.connections):
            conn.abort()
        for group in self.groups.values():
            group.pool.close_all()
        self.access_logs.close()
        self.stopped.set()


__all__ = ["App", "Listen"]
