"""upstream_show's answer: nginx-upsync-module's text, byte for byte, or JSON with live state."""

import os
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
    # each worker counts failures and connections on its own: say whose they are
    answer = {"worker": os.getpid(), "upstreams": upstreams}
    return orjson.dumps(answer, option=orjson.OPT_INDENT_2) + b"\n"


def parse_show_query(query: str) -> tuple[list[str], bool]:
    """`?test`, `?format=json`, `?test&format=json`: the upstreams named, and JSON or not."""
    names: list[str] = []
    as_json = False
    for item in query.split("&"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if sep and key == "format":
            as_json = value == "json"
        elif not sep:
            names.append(item)
    return names, as_json


def show_answer(
    groups: Sequence[UpstreamGroup], query: str, accept: bytes | None, monotonic_now: float
) -> tuple[int, bytes, bytes]:
    """Status, content type and body for an upstream_show request. The query is never echoed:
    the page must not carry what a client wrote into it."""
    names, as_json = parse_show_query(query)
    if accept is not None and b"application/json" in accept:
        as_json = True
    error = ""
    status = 200
    if len(names) > 1:
        status, error = 400, "one upstream name at most"
    elif names:
        groups = [g for g in groups if g.name == names[0]]
        if not groups:
            status, error = 404, "upstream not found"
    if error:
        if as_json:
            return status, b"application/json", orjson.dumps({"error": error})
        return status, b"text/plain", f"{error}\n".encode()
    if as_json:
        return 200, b"application/json", show_json(groups, monotonic_now)
    return 200, b"text/plain", show_text(groups).encode()
