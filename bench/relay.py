"""The bare relay make bench measures as the ceiling: uvloop and httptools passing requests
from keep-alive clients to one backend over pooled keep-alive connections, and the answers
back, and nothing else (no routing, balancing, header rules, timeouts or error pages). What
upsync spends beyond it is its own per-request work. Compiled by mypyc when make bench runs it.

    python relay.py LISTEN_PORT BACKEND_PORT
"""

import asyncio
import sys

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    """One pooled connection to the backend; relays one response at a time to its client."""

    def __init__(self, pool: "list[Upstream]") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: Client | None = None
        self.head: list[bytes] = []
        self.length = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-length":
            self.length = value

    def on_headers_complete(self) -> None:
        self.head = [
            b"HTTP/1.1 %d OK\r\nContent-Length: %s\r\n\r\n"
            % (self.parser.get_status_code(), self.length)
        ]

    def on_body(self, body: bytes) -> None:
        self.head.append(body)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        if client is not None and client.transport is not None:
            client.transport.write(b"".join(self.head))
            client.busy = False
            if not client.keep_alive:
                client.transport.close()
        self.pool.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)


class Client(asyncio.Protocol):
    def __init__(self, relay: "Relay") -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[bytes] = []
        self.busy = False
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() != b"connection":
            self.headers.append(name + b": " + value + b"\r\n")

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        head = (
            self.parser.get_method()
            + b" "
            + self.url
            + b" HTTP/1.1\r\n"
            + b"".join(self.headers)
            + b"\r\n"
        )
        self.headers = []
        self.busy = True
        self.relay.send(self, head)


class Relay:
    def __init__(self, loop: asyncio.AbstractEventLoop, backend: int) -> None:
        self.loop = loop
        self.backend = backend
        self.pool: list[Upstream] = []

    def send(self, client: Client, head: bytes) -> None:
        if self.pool:
            upstream = self.pool.pop()
            upstream.client = client
            assert upstream.transport is not None
            upstream.transport.write(head)
            return
        self.loop.create_task(self._connect(client, head))

    async def _connect(self, client: Client, head: bytes) -> None:
        _, upstream = await self.loop.create_connection(
            lambda: Upstream(self.pool), "127.0.0.1", self.backend
        )
        upstream.client = client
        assert upstream.transport is not None
        upstream.transport.write(head)


async def serve(port: int, backend: int) -> None:
    loop = asyncio.get_running_loop()
    relay = Relay(loop, backend)
    server = await loop.create_server(lambda: Client(relay), "127.0.0.1", port, backlog=511)
    async with server:
        await server.serve_forever()


def main() -> None:
    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2])))


if __name__ == "__main__":
    main()
