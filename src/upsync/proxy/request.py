"""One client request as the proxy sees it, and the nginx variables it defines."""

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

_wall_clock: Final = time.time


class ConnectionAddresses(Protocol):
    @property
    def local(self) -> tuple[str, int]: ...

    @property
    def remote(self) -> tuple[str, int]: ...


if TYPE_CHECKING:
    from upsync.config.model import LocationConfig
    from upsync.proxy.body import RequestBody
    from upsync.proxy.routing import VirtualServer


class Request:
    __slots__ = (
        "body",
        "body_complete",
        "body_size",
        "bytes_sent",
        "chunked",
        "connection",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "keep_alive",
        "location",
        "method",
        "path",
        "proxy_host",
        "query",
        "response_done",
        "server",
        "start",
        "status",
        "target",
        "upgrade",
        "upstream_addr",
        "upstream_status",
        "version",
    )

    def __init__(self, connection: "ConnectionAddresses") -> None:
        self.method = b""
        self.target = ""
        self.path = "/"
        self.query = ""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.host = ""
        self.keep_alive = True
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.upgrade = False
        self.body: RequestBody | None = None  # kept for sending once it has bytes
        self.body_size = 0
        self.body_complete = False
        self.response_done = False
        self.connection = connection
        self.server: VirtualServer | None = None
        self.location: LocationConfig | None = None
        self.start = _wall_clock()
        self.status = 0
        self.bytes_sent = 0
        self.upstream_addr = ""
        self.upstream_status = ""
        self.proxy_host = ""

    @property
    def remote_addr(self) -> str:
        return self.connection.remote[0]

    @property
    def remote_port(self) -> int:
        return self.connection.remote[1]

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def variable(self, name: str) -> str:
        getter = _VARIABLES.get(name)
        if getter is not None:
            return getter(self)
        if name.startswith("http_"):
            raw = self.header(name[5:].replace("_", "-").encode())
            return raw.decode("latin-1") if raw is not None else ""
        if name.startswith("arg_"):
            wanted = name[4:]
            for pair in self.query.split("&"):
                key, _, arg = pair.partition("=")
                if key == wanted:
                    return arg
            return ""
        if name.startswith("cookie_"):
            cookies = self.header(b"cookie")
            if cookies:
                for pair in cookies.decode("latin-1").split(";"):
                    key, _, cookie = pair.strip().partition("=")
                    if key == name[7:]:
                        return cookie
            return ""
        return ""


def _forwarded_for(req: Request) -> str:
    existing = req.header(b"x-forwarded-for")
    if existing:
        return existing.decode("latin-1") + ", " + req.remote_addr
    return req.remote_addr


def _time_local(req: Request) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(req.start))


_VARIABLES: dict[str, Callable[[Request], str]] = {
    "host": lambda r: r.host or (r.server.name if r.server else ""),
    "http_host": lambda r: (r.header(b"host") or b"").decode("latin-1"),
    "remote_addr": lambda r: r.remote_addr,
    "remote_port": lambda r: str(r.remote_port),
    "binary_remote_addr": lambda r: r.remote_addr,
    "proxy_add_x_forwarded_for": _forwarded_for,
    "scheme": lambda r: "http",
    "request_uri": lambda r: r.target,
    "uri": lambda r: r.path,
    "document_uri": lambda r: r.path,
    "args": lambda r: r.query,
    "query_string": lambda r: r.query,
    "is_args": lambda r: "?" if r.query else "",
    "request_method": lambda r: r.method.decode("latin-1"),
    "server_name": lambda r: r.server.name if r.server else "",
    "server_port": lambda r: str(r.connection.local[1]),
    "server_addr": lambda r: r.connection.local[0],
    "server_protocol": lambda r: f"HTTP/{r.version}",
    "proxy_host": lambda r: r.proxy_host,
    "proxy_port": lambda r: r.proxy_host.rpartition(":")[2] if ":" in r.proxy_host else "80",
    "content_length": lambda r: (r.header(b"content-length") or b"").decode("latin-1"),
    "content_type": lambda r: (r.header(b"content-type") or b"").decode("latin-1"),
    "upstream_addr": lambda r: r.upstream_addr,
    "upstream_status": lambda r: r.upstream_status,
    "status": lambda r: str(r.status),
    "request": lambda r: f"{r.method.decode('latin-1')} {r.target} HTTP/{r.version}",
    "time_local": _time_local,
    "time_iso8601": lambda r: time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(r.start)),
    "msec": lambda r: f"{time.time():.3f}",
    "remote_user": lambda r: "-",
    "body_bytes_sent": lambda r: str(r.bytes_sent),
    "bytes_sent": lambda r: str(r.bytes_sent),
    "request_time": lambda r: f"{time.time() - r.start:.3f}",
    "request_length": lambda r: str(r.body_size),
    "upstream_response_time": lambda r: "-",
    "connection": lambda r: "0",
    "connection_requests": lambda r: "1",
    "pid": lambda r: str(os.getpid()),
}
