"""One configuration generation: everything built from one Config (routing tables, proxy plans,
the upstream groups it names, where its access logs go). A connection holds the generation it
was accepted under and asks it, never the App, for per-configuration state; so a reload never
changes what a connection that is already open sees, and a generation is freed when its last
connection ends."""

import logging
from typing import TYPE_CHECKING

from upsync.admin.show import show_answer
from upsync.config.model import (
    BalanceMethod,
    Config,
    LocationConfig,
    ProxyPass,
    ServerBlock,
    UpstreamConfig,
)
from upsync.config.rewrite import IfBlock, Step
from upsync.config.servers import (
    ServerLineError,
    format_name,
    is_ip,
    parse_server_params,
    split_address,
)
from upsync.logs import AccessLogFiles
from upsync.proxy.exchange import ProxyExchange, ProxyPlan, proxy_host_of
from upsync.proxy.request import Request
from upsync.proxy.routing import ServerTable
from upsync.upstream.group import UpstreamGroup

if TYPE_CHECKING:
    from upsync.proxy.client import ClientConnection

log = logging.getLogger("upsync")

BindKey = tuple[str, int]
MAX_ADDRESS_GROUPS = 256


def bind_keys(config: Config) -> dict[BindKey, list[int]]:
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


class Generation:
    def __init__(
        self,
        config: Config,
        groups: dict[str, UpstreamGroup],
        access_logs: AccessLogFiles,
    ) -> None:
        self.config = config
        self.groups = groups
        self.access_logs = access_logs
        # set when a reload replaces this generation: its connections close after answering
        # what they have received, each at its own moment of the drain window (see retire)
        self.retired = False
        self.retired_at = 0.0
        self.drain_window = 0.0
        self.tables: dict[BindKey, ServerTable] = {
            key: ServerTable([config.servers[i] for i in indexes], key[1], key[0])
            for key, indexes in bind_keys(config).items()
        }
        self.plans: dict[int, ProxyPlan] = {}
        self.address_groups: dict[str, UpstreamGroup] = {}  # see _address_group
        for server in config.servers:
            for location in _every_location(server):
                if isinstance(location.handler, ProxyPass):
                    plan = ProxyPlan(location, location.handler)
                    if plan.upstream is not None:
                        plan.group = groups.get(plan.upstream)
                    self.plans[id(location)] = plan

    def retire(self, now: float, drain_window: float) -> None:
        """Replaced by a reload (or by quitting, with no window): from its moment within the
        window on, each connection closes after answering what it has received. Spread, as
        Envoy drains gradually, so that a reload does not make every keep-alive client
        reconnect in the same millisecond (that burst stalled everyone: p99 ~25 ms at ten
        reloads a second); at once, nginx's way, when the process quits."""
        self.retired = True
        self.retired_at = now
        self.drain_window = drain_window

    def drain_moment(self, share: float) -> float:
        return self.retired_at + self.drain_window * share

    def start_exchange(
        self, client: "ClientConnection", req: Request, plan: ProxyPlan
    ) -> ProxyExchange | None:
        """`plan`: the one in `plans` for the request's location."""
        uri_override: str | None = None
        if plan.group is not None:
            req.proxy_host = plan.proxy_host
            return ProxyExchange(client, req, plan, plan.group, None)
        if plan.upstream is not None:
            name = plan.upstream
        else:
            assert plan.target is not None
            url = plan.target.render(req)
            scheme, sep, rendered = url.partition("://")
            if not sep or scheme.lower() != "http":
                log.error('invalid URL prefix in "%s"', url)
                client.send_error(500)
                return None
            if rendered.startswith("unix:"):
                # "unix:/path/to.sock" or "unix:/path/to.sock:/uri", as in a literal proxy_pass
                end = rendered.find(":", 5)
                name = rendered[:end] if end > 0 else rendered
                if end > 0 and rendered[end + 1 :]:
                    uri_override = rendered[end + 1 :]
            else:
                name, slash, rest = rendered.partition("/")
                if slash:
                    uri_override = "/" + rest
        group = self.groups.get(name)
        if group is None:
            group = self._address_group(name)
        if group is None:
            log.error(
                'no upstream "%s" for "%s" (a proxy_pass with variables names an upstream, an '
                "IP address or a unix socket; upsync resolves no name at run time)",
                name,
                req.target,
            )
            client.send_error(502)
            return None
        req.proxy_host = plan.proxy_host if plan.upstream is not None else proxy_host_of(name)
        return ProxyExchange(client, req, plan, group, uri_override)

    def _address_group(self, name: str) -> UpstreamGroup | None:
        """A proxy_pass with variables that names an address, not an upstream: an IP address
        and port, or a unix socket, needs no resolving, so nginx connects to it as a one-server
        upstream of its own; the ones made are kept (a bounded number) for their connections."""
        group = self.address_groups.get(name)
        if group is not None:
            return group
        try:
            spec = parse_server_params(name if name.startswith("unix:") else _with_port(name), ())
        except ServerLineError:
            return None
        if not (spec.host.startswith("unix:") or is_ip(spec.host)):
            return None
        if len(self.address_groups) >= MAX_ADDRESS_GROUPS:
            self.address_groups.pop(next(iter(self.address_groups)))
        config = UpstreamConfig(name, (spec,), BalanceMethod(), implicit=True)
        group = self.address_groups[name] = UpstreamGroup(config)
        return group

    def can_stream_body(self, req: Request) -> bool:
        """A chunked body of unknown length can only be streamed to an HTTP/1.1 upstream; for
        proxy_http_version 1.0 it is read whole first (into a temporary file). A body the
        location does not pass on (proxy_set_body, proxy_pass_request_body off) is read whole
        and dropped: the request goes when it has been read."""
        if req.location is None:
            return True
        plan = self.plans.get(id(req.location))
        if plan is None:
            return True
        if plan.body is not None:
            return False
        return req.content_length is not None or plan.version == b"1.1"

    def show_upstreams(self, req: Request, monotonic_now: float) -> tuple[int, bytes, bytes]:
        explicit = [g for g in self.groups.values() if not g.config.implicit]
        return show_answer(explicit, req.query, req.header(b"accept"), monotonic_now)

    def log_access(self, req: Request) -> None:
        location = req.location
        if location is None:
            return
        for access_log in location.access_logs:
            condition = access_log.condition
            if condition is not None and condition.render(req) in ("", "0"):
                continue
            try:
                line = access_log.format.render_for_log(req)
                self.access_logs.get(access_log.path).write(line + "\n")
            except OSError as exc:
                log.error("cannot write access log %s: %s", access_log.path, exc)


def _with_port(address: str) -> str:
    """An address a variable gave, with nginx's default port when it names none."""
    host, port = split_address(address)
    return format_name(host, port)


def _every_location(server: ServerBlock) -> list[LocationConfig]:
    found: list[LocationConfig] = [server.fallback, *server.named.values()]
    pending = list(server.locations)
    while pending:
        location = pending.pop()
        found.append(location)
        pending.extend(location.locations)
        pending.extend(_if_locations(location.rewrites))
    return found


def _if_locations(steps: "tuple[Step, ...]") -> list[LocationConfig]:
    """The locations `if` blocks with other directives stand for (they are served too)."""
    return [step.location for step in steps if isinstance(step, IfBlock) and step.location]
