"""upstream_show's answer: nginx-upsync-module's text, byte for byte, or JSON with live state."""

import time
from collections.abc import Sequence

import orjson

from upsync.upstream.dump import server_line
from upsync.upstream.group import UpstreamGroup


def show_text(groups: Sequence[UpstreamGroup]) -> str:
    out = []
    for group in groups:
        out.append(f"Upstream name: {group.name}; Backend server count: {len(group.peers)}\n")
        for peer in group.peers:
            out.append(f"        {server_line(peer.spec())}\n")
        out.append("\n")
    return "".join(out)


def show_json(groups: Sequence[UpstreamGroup], monotonic_now: float) -> bytes:
    wall_offset = time.time() - monotonic_now
    upstreams = []
    for group in groups:
        servers = []
        for peer in group.peers:
            until = peer.unavailable_until(monotonic_now)
            servers.append(
                {
                    "server": peer.name,
                    "weight": peer.weight,
                    "max_fails": peer.max_fails,
                    "fail_timeout": peer.fail_timeout,
                    "max_conns": peer.max_conns,
                    "backup": peer.backup,
                    "down": peer.down,
                    "fails": peer.fails,
                    "active": peer.conns,
                    "unavailable_until": None if until is None else round(until + wall_offset, 3),
                }
            )
        upstreams.append({"name": group.name, **group.status(), "servers": servers})
    return orjson.dumps({"upstreams": upstreams}, option=orjson.OPT_INDENT_2) + b"\n"


def parse_show_query(query: str) -> tuple[str | None, bool]:
    """`?test`, `?format=json`, `?test&format=json`: the upstream asked for, and JSON or not."""
    name: str | None = None
    as_json = False
    for item in query.split("&"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if sep and key == "format":
            as_json = value == "json"
        elif not sep:
            name = item
    return name, as_json
