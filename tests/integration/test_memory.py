"""Finished connections are freed by reference counting, not left in cycles for the collector:
in a proxy that sees thousands of connections a second, cyclic garbage means collector passes on
the hot path and memory that grows between them."""

import asyncio
import gc
from pathlib import Path

import uvloop

from tests.helpers import Backend, free_port
from upsync.app import App
from upsync.config import load_config
from upsync.proxy.client import ClientConnection
from upsync.proxy.request import Request
from upsync.proxy.upstream_conn import UpstreamConnection

CONFIG = """
events {}
http {
    upstream backend { server 127.0.0.1:BACKEND; }
    server {
        listen 127.0.0.1:PORT;
        location / { proxy_pass http://backend; }
        location /here { return 200 "here"; }
    }
}
"""


async def _fetch(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


async def _exercise(conf: Path, port: int) -> None:
    app = App(load_config(str(conf)), asyncio.get_running_loop())
    await app.start()
    try:
        for _ in range(20):
            assert b"200 OK" in await _fetch(port, "/")
            assert (await _fetch(port, "/here")).endswith(b"here")

        async def settled() -> None:
            while len(app.connections):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(settled(), 10)
    finally:
        await app.close()


def _live(kind: type) -> int:
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


def test_closed_connections_leave_no_cycles(tmp_path: Path) -> None:
    port = free_port()
    with Backend("b") as backend:
        conf = tmp_path / "upsync.conf"
        conf.write_text(CONFIG.replace("BACKEND", str(backend.port)).replace("PORT", str(port)))
        gc.collect()
        gc.disable()
        try:
            before = _live(ClientConnection), _live(UpstreamConnection)
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(_exercise(conf, port))
            assert (_live(ClientConnection), _live(UpstreamConnection)) == before
        finally:
            gc.enable()


async def _idle_keep_alive(conf: Path, port: int, clients: int) -> int:
    """Requests alive while `clients` keep-alive connections sit idle after two requests each."""
    app = App(load_config(str(conf)), asyncio.get_running_loop())
    await app.start()
    streams = []
    try:
        for _ in range(clients):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(2):  # the second is the first one's bytes again
                writer.write(b"GET /here HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await reader.readuntil(b"here")).startswith(b"HTTP/1.1 200")
            streams.append(writer)
        return _live(Request)
    finally:
        for writer in streams:
            writer.close()
        await app.close()


def test_idle_keep_alive_connections_hold_no_request(tmp_path: Path) -> None:
    """What a connection keeps between requests (the last request's bytes and headers, to
    know them again) is not the request itself: thousands of idle clients hold none."""
    port = free_port()
    conf = tmp_path / "upsync.conf"
    conf.write_text(CONFIG.replace("BACKEND", str(free_port())).replace("PORT", str(port)))
    gc.collect()
    gc.disable()
    try:
        before = _live(Request)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            during = runner.run(_idle_keep_alive(conf, port, 20))
        assert during == before
    finally:
        gc.enable()
