"""One client request as the proxy sees it, and the nginx variables it defines."""

import base64
import binascii
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, Protocol

from upsync.proxy.rate import client_rate

_wall_clock: Final = time.time


class ConnectionAddresses(Protocol):
    @property
    def local(self) -> tuple[str, int]: ...

    @property
    def remote(self) -> tuple[str, int]: ...

    @property
    def serial(self) -> int: ...

    @property
    def maps(self) -> "Mapping[str, VariableMap]": ...

    def age(self) -> float: ...


# One upstream try of a request, for the $upstream_* variables: the peer's name, the status
# it answered (0 when none), and seconds from the try's start to its connection, its response
# head and its end (-1.0: never reached), the response body bytes it delivered, and the bytes
# received from and sent to the upstream.
UpstreamTry = tuple[str, int, float, float, float, int, int, int]
# Final: compiled code reads it as a constant, not from the module's dict
NO_TRIES: Final[tuple[UpstreamTry, ...]] = ()


if TYPE_CHECKING:
    from upsync.config.maps import VariableMap
    from upsync.config.model import LocationConfig
    from upsync.config.regex import RegexMatch
    from upsync.proxy.body import RequestBody
    from upsync.proxy.routing import VirtualServer


class RequestExtras:
    """What only some requests need, kept apart so the plain proxied request carries none of
    it: made on first use."""

    __slots__ = ("headers_out", "if_location", "kept_lines", "sent_trailers", "upstream_accel")

    def __init__(self) -> None:
        self.if_location: LocationConfig | None = None  # an `if` location whose condition held
        self.headers_out: list[bytes] | None = None  # the answer's header lines while made
        self.sent_trailers: list[bytes] | None = None  # add_trailer's lines, as they are made
        self.upstream_accel: list[bytes] | None = None  # its X-Accel-* lines, not passed on
        # after an X-Accel-Redirect (or an intercepted 401), the upstream headers kept
        self.kept_lines: list[bytes] | None = None


class Request:
    __slots__ = (
        "body",
        "body_complete",
        "body_dropped",
        "body_size",
        "bytes_sent",
        "captures",
        "chunked",
        "connection",
        "content_length",
        "expect_continue",
        "extra",
        "head_size",
        "headers",
        "host",
        "keep_alive",
        "location",
        "method",
        "nth",
        "path",
        "pipelined",
        "proxy_host",
        "query",
        "raw_target",
        "redirects",
        "request_id",
        "response_done",
        "rewritten",
        "sent_head",
        "server",
        "skip_mask",
        "start",
        "status",
        "status_override",
        "target",
        "tries",
        "try_connected",
        "try_ended",
        "try_header",
        "try_peer",
        "try_received",
        "try_sent",
        "try_started",
        "try_status",
        "upgrade",
        "upstream_lines",
        "vars",
        "version",
    )

    def __init__(self, connection: "ConnectionAddresses", start: float = -1.0) -> None:
        """`start`: the wall clock's time, when the caller has read it."""
        self.method = b""
        self.target = ""
        self.raw_target = b""  # the target's bytes as they came, while `target` is them
        self.path = "/"
        self.query = ""
        self.version = "1.1"
        # name, value, name, value...: flat, so a header costs the parse two appends and no
        # tuple (pairs() gives them as pairs)
        self.headers: list[bytes] = []
        self.skip_mask = 0  # by position, the headers never passed upstream (hop-by-hop, ...)
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
        self.extra: RequestExtras | None = None  # what few requests need, made when they do
        self.start = start if start >= 0 else _wall_clock()
        self.status = 0
        self.bytes_sent = 0  # of the response body
        self.proxy_host = ""
        # the upstream tries before the current one; the current one's moments (loop time,
        # -1.0 until reached) are plain fields, so a request tried once builds no record
        self.tries = NO_TRIES
        self.try_peer = ""
        self.try_status = 0
        self.try_started = self.try_connected = self.try_header = self.try_ended = -1.0
        self.try_received = self.try_sent = 0
        self.head_size = 0  # of the request line and headers as received
        self.nth = 0  # of the requests on its connection
        self.pipelined = False  # read behind another request's bytes
        self.request_id = ""
        self.sent_head = b""  # the response head as written to the client
        self.upstream_lines: list[bytes] | None = None  # the upstream response's header lines
        self.captures: RegexMatch | None = None  # of the last map regex that matched
        self.redirects = 0  # to error pages
        self.status_override = 0  # the status an error page's answer is sent with (0: its own)
        self.body_dropped = False  # an error page's request goes without the client's body
        self.vars: dict[str, str] | None = None  # set by `set`
        # a rewrite changed the URI: 1, the location chosen again; 2, kept by a `break` (the
        # changed URI then goes upstream whole, proxy_pass's URI part aside, as in nginx)
        self.rewritten = 0

    @property
    def remote_addr(self) -> str:
        return self.connection.remote[0]

    @property
    def remote_port(self) -> int:
        return self.connection.remote[1]

    def begin_try(self, peer: str, now: float) -> None:
        """An upstream try starts (the previous one, if any, has ended)."""
        if self.try_started >= 0:
            self.tries = self.all_tries()
        self.try_peer = peer
        self.try_status = 0
        self.try_started = now
        self.try_connected = self.try_header = self.try_ended = -1.0
        self.try_received = self.try_sent = 0

    def end_try(self, status: int, now: float) -> None:
        if self.try_started >= 0 and self.try_ended < 0:
            self.try_status = status
            self.try_ended = now

    def all_tries(self) -> tuple[UpstreamTry, ...]:
        started = self.try_started
        if started < 0:
            return self.tries
        connected, header = self.try_connected, self.try_header
        current = (
            self.try_peer,
            self.try_status,
            connected - started if connected >= 0 else -1.0,
            header - started if header >= 0 else -1.0,
            self.try_ended - started if self.try_ended >= 0 else -1.0,
            self.bytes_sent if header >= 0 else 0,
            self.try_received,
            self.try_sent,
        )
        return (*self.tries, current)

    def pairs(self) -> list[tuple[bytes, bytes]]:
        """The request's headers as (name, value) pairs, in their order."""
        headers = self.headers
        return list(zip(headers[::2], headers[1::2], strict=True))

    def header(self, name: bytes) -> bytes | None:
        headers = self.headers
        for at in range(0, len(headers), 2):
            if headers[at].lower() == name:
                return headers[at + 1]
        return None

    def extras(self) -> RequestExtras:
        extra = self.extra
        if extra is None:
            extra = self.extra = RequestExtras()
        return extra

    def kept_lines(self) -> list[bytes] | None:
        """The upstream headers an answer keeps after an X-Accel-Redirect (or a 401 an error
        page answers), if any."""
        return self.extra.kept_lines if self.extra is not None else None

    def limit_rate(self) -> int:
        """$limit_rate: bytes a second to the client (0: none); `set $limit_rate` changes it."""
        location = self.location
        assigned = self.vars.get("limit_rate") if self.vars is not None else None
        if location is None:
            return 0
        return client_rate(location, self, assigned)

    def joined_header(self, name: bytes) -> str:
        """$http_NAME: every such header's value, joined as nginx joins repeated ones (";" for
        Cookie, "," for the others)."""
        found: list[bytes] | None = None
        first = b""
        headers = self.headers
        for at in range(0, len(headers), 2):
            if headers[at].lower() == name:
                value = headers[at + 1]
                if found is None and not first:
                    first = value
                elif found is None:
                    found = [first, value]
                else:
                    found.append(value)
        if found is None:
            return first.decode("latin-1")
        return (b"; " if name == b"cookie" else b", ").join(found).decode("latin-1")

    def variable(self, name: str) -> str:
        getter = _VARIABLES.get(name)
        if getter is not None:
            return getter(self)
        variables = self.vars
        if variables is not None and name in variables:
            return variables[name]
        mapping = self.connection.maps.get(name)
        if mapping is not None:
            template, match = mapping.choose(mapping.source.render(self))
            if match is not None:
                self.captures = match
            return template.render(self)
        if name.startswith("http_"):
            return self.joined_header(name[5:].replace("_", "-").encode())
        if name.startswith("arg_"):
            wanted = name[4:]
            for pair in self.query.split("&"):
                key, _, arg = pair.partition("=")
                if key == wanted:
                    return arg
            return ""
        if name.startswith("upstream_http_"):
            found = _header_in(self.upstream_lines or (), name[14:])
            extra = self.extra
            if not found and extra is not None and extra.upstream_accel is not None:
                return _header_in(extra.upstream_accel, name[14:])
            return found
        if name.startswith("upstream_cookie_"):
            return _cookie_in(self.upstream_lines or (), name[16:])
        if name.startswith("sent_http_"):
            head = self.sent_head
            if not head:  # the head is being made: its lines so far
                lines = self.extra.headers_out if self.extra is not None else None
                return _header_in(lines or (), name[10:])
            return _header_in(head[: head.find(b"\r\n\r\n")].split(b"\r\n")[1:], name[10:])
        if name.startswith("sent_trailer_"):
            trailers = self.extra.sent_trailers if self.extra is not None else None
            return _header_in(trailers or (), name[13:])
        if name.startswith("cookie_"):
            cookie_wanted = name[7:]
            for header_name, value in self.pairs():
                if header_name.lower() == b"cookie":
                    for pair in value.decode("latin-1").split(";"):
                        cookie_name, _, cookie = pair.strip().partition("=")
                        if cookie_name == cookie_wanted:
                            return cookie
            return ""
        return self.capture(name)

    def capture(self, name: str) -> str:
        """$1..$9 or a named capture: of the last map regex that matched, else of the
        location's regex, else of the server name's (nginx's order: the later match wins)."""
        for match in (self.captures, *self._route_matches()):
            if match is None:
                continue
            try:
                value = match.group(int(name) if name.isdigit() else name)
            except IndexError:  # no such group in this regex
                continue
            return value or ""
        return ""

    def _route_matches(self) -> "tuple[RegexMatch | None, ...]":
        location = self.location
        server = self.server
        return (
            location.regex.search(self.path) if location is not None and location.regex else None,
            server.name_match(self.host) if server is not None else None,
        )


def _header_in(lines: "list[bytes] | tuple[bytes, ...]", variable_name: str) -> str:
    """A header's value among raw `Name: value` lines, nginx's way: the variable's name with
    dashes for underscores, matched ignoring case; repeated headers joined by ", " (Set-Cookie
    too, as nginx 1.23 on)."""
    wanted = variable_name.replace("_", "-").encode("latin-1")
    found = []
    for line in lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() == wanted:
            found.append(value.strip())
    return b", ".join(found).decode("latin-1")


def _cookie_in(lines: "list[bytes] | tuple[bytes, ...]", wanted: str) -> str:
    """A cookie's value among the Set-Cookie headers of a response ($upstream_cookie_NAME)."""
    for line in lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() != b"set-cookie":
            continue
        # spaces around the name and the value, never tabs, as nginx's parser takes them
        key, equals, rest = value.rstrip(b"\r\n").strip(b" ").partition(b"=")
        if equals and key.strip(b" ").decode("latin-1") == wanted:
            return rest.split(b";", 1)[0].strip(b" ").decode("latin-1")
    return ""


def _request_body(req: Request) -> str:
    """The body, once read whole into memory (nginx: "in a memory buffer"), else empty."""
    body = req.body
    if body is None or not req.body_complete or not body.in_memory_whole or req.body_dropped:
        return ""
    return body.in_memory().decode("latin-1")


def _tries_of(req: Request, render: Callable[[UpstreamTry], str]) -> str:
    """An $upstream_* value: one entry per try, nginx's ", " between them."""
    tries = req.all_tries()
    if len(tries) == 1:
        return render(tries[0])
    return ", ".join(render(attempt) for attempt in tries)


def _seconds(value: float) -> str:
    return "-" if value < 0 else f"{value:.3f}"


def _tries_field(index: int) -> "Callable[[Request], str]":
    """An $upstream_* variable showing one field of each try: seconds (2, 3, 4) with
    milliseconds or "-", a status or "-" when none (1), else as it is."""

    def field(attempt: UpstreamTry) -> str:
        value = attempt[index]
        if 2 <= index <= 4:
            assert isinstance(value, float)
            return _seconds(value)
        if index == 1:
            return str(value) if value else "-"
        return str(value)

    return lambda req: _tries_of(req, field)


def _remote_user(req: Request) -> str:
    """The user name of Basic credentials, as nginx's $remote_user (empty without them)."""
    credentials = req.header(b"authorization")
    if not credentials or credentials[:6].lower() != b"basic ":
        return ""
    try:
        decoded = base64.b64decode(credentials[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return ""
    user, colon, _ = decoded.partition(b":")
    return user.decode("latin-1") if colon else ""


def _request_id(req: Request) -> str:
    if not req.request_id:
        req.request_id = os.urandom(16).hex()
    return req.request_id


def _request_length(req: Request) -> str:
    """Request line, headers and body as received: method, SP, the parsed line and header
    bytes (names, values and their separators), the version and the blank line."""
    return str(len(req.method) + req.head_size + 14 + req.body_size)


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
    "content_type": lambda r: r.joined_header(b"content-type"),
    "upstream_addr": _tries_field(0),
    "upstream_status": _tries_field(1),
    "upstream_connect_time": _tries_field(2),
    "upstream_header_time": _tries_field(3),
    "upstream_response_time": _tries_field(4),
    "upstream_response_length": _tries_field(5),
    "upstream_bytes_received": _tries_field(6),
    "upstream_bytes_sent": _tries_field(7),
    "request_body": _request_body,
    "request_body_file": lambda r: r.body.file_name if r.body is not None else "",
    "limit_rate": lambda r: str(r.limit_rate()),
    "connection_time": lambda r: f"{r.connection.age():.3f}",
    "status": lambda r: str(r.status),
    "request": lambda r: f"{r.method.decode('latin-1')} {r.target} HTTP/{r.version}",
    "time_local": _time_local,
    "time_iso8601": lambda r: time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(r.start)),
    "msec": lambda r: f"{time.time():.3f}",
    "remote_user": _remote_user,
    "body_bytes_sent": lambda r: str(r.bytes_sent),
    "bytes_sent": lambda r: str(len(r.sent_head) + r.bytes_sent),
    # the start comes from the loop's clock in milliseconds: never shown below zero
    "request_time": lambda r: f"{max(0.0, time.time() - r.start):.3f}",
    "request_length": _request_length,
    "request_id": _request_id,
    "connection": lambda r: str(r.connection.serial),
    "connection_requests": lambda r: str(r.nth),
    "pipe": lambda r: "p" if r.pipelined else ".",
    "https": lambda r: "",
    "pid": lambda r: str(os.getpid()),
}
