"""`upstream NAME { ... }` blocks into UpstreamConfig."""

import os
from collections.abc import Callable
from dataclasses import replace

from upsync.config.model import BalanceMethod, ServerSpec, UpstreamConfig, UpsyncDirectives
from upsync.config.nodes import Node
from upsync.config.servers import ServerLineError, parse_server_params, resolve
from upsync.config.upsync import SyncSpec, UpsyncError, apply_upsync_lb, parse_upsync
from upsync.config.variables import VariableError, compile_template
from upsync.units import UnitError, parse_time

_METHODS = ("least_conn", "ip_hash", "hash", "random")
# nginx refuses `backup` with these methods: they choose a server from the key alone.
_NO_BACKUP = ("ip_hash", "hash", "random")


def build_upstream(
    node: Node, notices: list[str], resolve_path: Callable[[str], str] = lambda p: p
) -> UpstreamConfig:
    name = node.args[0]
    servers: list[ServerSpec] = []
    method = BalanceMethod()
    method_node: Node | None = None
    keepalive = 0
    keepalive_timeout = 60.0
    keepalive_requests = 1000
    keepalive_time = 3600.0
    upsync: tuple[str, ...] | None = None
    upsync_node: Node | None = None
    dump_path: str | None = None
    lb: str | None = None
    lb_node: Node | None = None
    for child in node.block or ():
        if child.name == "server":
            servers.extend(_server(child))
        elif child.name in _METHODS:
            if method_node is not None:
                raise child.error(f'load balancing method redefined by "{child.name}"')
            method_node = child
            method = _method(child)
        elif child.name == "keepalive":
            keepalive = _count(child, minimum=1)
        elif child.name == "keepalive_timeout":
            keepalive_timeout = _time(child)
        elif child.name == "keepalive_requests":
            keepalive_requests = _count(child, minimum=1)
        elif child.name == "keepalive_time":
            keepalive_time = _time(child)
        elif child.name == "upsync":
            if upsync_node is not None:
                raise child.error('"upsync" directive is duplicate')
            upsync, upsync_node = child.args, child
        elif child.name == "upsync_dump_path":
            dump_path = resolve_path(child.args[0])
        elif child.name == "upsync_lb":
            lb, lb_node = child.args[0], child
        elif child.name == "zone":
            # nginx shares failure counters and connection counts through it; upsync shares
            # the server list (the master's) and keeps counters per worker
            notices.append(
                f'"zone" in upstream "{name}": each worker keeps its own failure and connection '
                f"counts ({child.file}:{child.line})"
            )
        elif child.name.startswith("check"):
            notices.append(f'"{child.name}" is not implemented yet and is ignored')
        else:
            raise child.error(f'"{child.name}" directive is not supported in upstream by upsync')
    if not servers and upsync is None:
        raise node.error(f'no servers are inside upstream "{name}"')
    if method.kind in _NO_BACKUP and any(s.backup for s in servers):
        raise node.error(f'balancing method "{method.kind}" does not support "backup" servers')
    sync = UpsyncDirectives(upsync=upsync, dump_path=dump_path, lb=lb, where=node.where)
    spec: SyncSpec | None = None
    if upsync_node is not None:
        try:
            token = os.environ.get("CONSUL_HTTP_TOKEN")
            spec = parse_upsync(upsync_node.args, dump_path, name, token)
        except UpsyncError as exc:
            raise upsync_node.error(f'{exc} in "upsync" directive') from None
        if spec.kind == "file":
            spec = replace(spec, path=resolve_path(spec.path))
    elif lb_node is not None:
        raise lb_node.error('"upsync_lb" needs an "upsync" directive in the same upstream')
    if lb_node is not None:
        try:
            method = apply_upsync_lb(method, sync)
        except UpsyncError as exc:
            raise lb_node.error(f'{exc} in "upsync_lb" directive') from None
    return UpstreamConfig(
        name=name,
        servers=tuple(servers),
        method=method,
        keepalive=keepalive,
        keepalive_timeout=keepalive_timeout,
        keepalive_requests=keepalive_requests,
        keepalive_time=keepalive_time,
        sync=sync,
        sync_spec=spec,
        where=node.where,
    )


def _server(node: Node) -> list[ServerSpec]:
    try:
        return resolve(parse_server_params(node.args[0], node.args[1:]))
    except ServerLineError as exc:
        raise node.error(f'{exc} in "server" directive') from None


def _method(node: Node) -> BalanceMethod:
    args = node.args
    if node.name == "hash":
        if len(args) == 2 and args[1] != "consistent":
            raise node.error(f'invalid parameter "{args[1]}" in "hash" directive')
        try:
            key = compile_template(args[0])
        except VariableError as exc:
            raise node.error(str(exc)) from None
        return BalanceMethod("hash", key=key, consistent=len(args) == 2, where=node.where)
    if node.name == "random":
        if args and args[0] != "two":
            raise node.error(f'invalid parameter "{args[0]}" in "random" directive')
        if len(args) == 2 and args[1] != "least_conn":
            raise node.error(f'invalid parameter "{args[1]}" in "random" directive')
        return BalanceMethod("random", two=bool(args), where=node.where)
    if node.name == "least_conn":
        return BalanceMethod("least_conn", where=node.where)
    return BalanceMethod("ip_hash", where=node.where)


def _count(node: Node, minimum: int) -> int:
    value = node.args[0]
    if not value.isdigit() or int(value) < minimum:
        raise node.invalid(value)
    return int(value)


def _time(node: Node) -> float:
    try:
        return parse_time(node.args[0])
    except UnitError:
        raise node.invalid(node.args[0]) from None
