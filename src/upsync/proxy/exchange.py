"""One proxied request: choose a peer, send, relay the response, and retry the way
`proxy_next_upstream` says, marking failures on peers as nginx's passive health check does."""

import asyncio
import errno
import logging
import socket
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

from upsync.config.model import LocationConfig, ProxyPass, ProxySettings
from upsync.config.servers import ServerLineError, split_address
from upsync.config.variables import Template, compile_template
from upsync.proxy.accel import accel_value, kept_on_redirect, limit_rate_value
from upsync.proxy.http1 import (
    CLOSE_END,
    CONNECTION_UPGRADE,
    HOP_BY_HOP,
    KEEP_ALIVE_END,
    LENGTH_CLOSE_END,
    LENGTH_KEEP_ALIVE_END,
    NON_IDEMPOTENT,
    HeaderClasses,
    HeaderMemory,
    common_headers_at,
    date_header,
    drop_headers,
    head_end,
    header_filter,
    header_line,
    last_chunk,
    last_modified_of,
    ok_head_start_at,
    server_header,
    status_has_body,
    status_line,
    trailer_lines,
    trailers_apply,
)
from upsync.proxy.rate import RateLimit, limit_for
from upsync.proxy.redirects import location_rules
from upsync.proxy.request import Request
from upsync.proxy.upstream_conn import (
    RESPONSE_HEADERS,
    UpstreamConnection,
    response_header_classes,
)
from upsync.upstream.balancer import release
from upsync.upstream.group import UpstreamGroup
from upsync.upstream.peer import Peer

if TYPE_CHECKING:
    from upsync.proxy.client import ClientConnection

log = logging.getLogger("upsync.proxy")

STATUS_CONDITIONS: Final[dict[int, str]] = {
    500: "http_500",
    502: "http_502",
    503: "http_503",
    504: "http_504",
    403: "http_403",
    404: "http_404",
    429: "http_429",
}
# nginx does not count these as a failure of the peer, only as a reason to try the next one.
NOT_FAILURES: Final = frozenset({"http_403", "http_404"})
_SKIP_REQUEST_HEADERS: Final = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
_HOST_TEMPLATE = compile_template("$proxy_host")
_CLOSE_TEMPLATE = compile_template("close")
_NO_BODY = compile_template("")

# What nginx leaves unescaped when it puts a decoded $uri back into a URI (ngx_escape_uri's
# NGX_ESCAPE_URI since 1.21.1): printable ASCII but what RFC 3986 does not allow (space, `"`,
# "<", ">", "\\", "^", "`", "{", "|", "}") and "#", "%", "?". A decoded "%2e" must not reach the
# upstream as "%2e" again, or "/static/%252e%252e/" would climb out of its prefix.
URI_SAFE: Final = "".join(
    chr(c) for c in range(0x21, 0x7F) if chr(c) not in '#%?"<>\\^`{|}' and not chr(c).isalnum()
)

_IP_TRANSPARENT: Final = getattr(socket, "IP_TRANSPARENT", 19)

LOCAL_RESOURCE_ERRORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

SPOOL_BLOCK: Final = 64 * 1024

# Bodies up to this size are read whole before the upstream is chosen, so a failed attempt can
# be replayed on the next peer (nginx's proxy_request_buffering); larger ones are streamed.
REPLAYABLE_BODY: Final = 1024 * 1024

# how the response body is framed towards the client
FRAME_NONE: Final = 0
FRAME_LENGTH: Final = 1
FRAME_CHUNKED: Final = 2
FRAME_CLOSE: Final = 3


def proxy_host_of(upstream: str) -> str:
    """$proxy_host: the upstream's name, or "localhost" for a unix socket, as nginx sends."""
    return "localhost" if upstream.startswith("unix:") else upstream


def trailing(location: LocationConfig, req: Request, status: int) -> bool:
    """Whether this answer carries add_trailer's lines: HTTP/1.1, chunked, with a body (an
    answer of known length then goes chunked too, as nginx sends it)."""
    return (
        bool(location.add_trailers)
        and req.version == "1.1"
        and location.chunked_transfer_encoding
        and req.method != b"HEAD"
        and status_has_body(status)
        and trailers_apply(location.add_trailers, status)
    )


def trailers_of(location: LocationConfig, req: Request, status: int) -> bytes:
    made: list[bytes] = []
    req.extras().sent_trailers = made
    return trailer_lines(location.add_trailers, status, req, made)


class ProxyPlan:
    """What a location's proxy_pass needs per request, computed once."""

    __slots__ = (
        "body",
        "group",
        "headers",
        "length_kept",
        "line_end",
        "location",
        "may_limit",
        "method",
        "own_date",
        "own_server",
        "pass_headers",
        "passes",
        "proxy_host",
        "redirects",
        "response_headers",
        "target",
        "upstream",
        "uri",
        "version",
    )

    def __init__(self, location: LocationConfig, handler: ProxyPass) -> None:
        settings = location.proxy
        self.location = location
        self.upstream = handler.upstream
        # the upstream's group, when its generation knows it by name (set by the generation)
        self.group: UpstreamGroup | None = None
        self.proxy_host = proxy_host_of(handler.upstream) if handler.upstream is not None else ""
        # limit_rate or proxy_limit_rate may apply: the rate is worked out per response then
        self.may_limit = bool(settings.limit_rate) or location.limit_rate is not None
        self.target = handler.target
        self.uri = handler.uri
        self.method = settings.method
        # what is sent instead of the client's body: proxy_set_body, or nothing with
        # proxy_pass_request_body off (None: the client's body)
        self.body = settings.set_body
        if self.body is None and not settings.pass_request_body:
            self.body = _NO_BODY
        # proxy_pass_request_body off still sends the client's Content-Length, as nginx does
        # (its recipe, as for auth_request, adds `proxy_set_header Content-Length "";`)
        self.length_kept = settings.set_body is None and "content-length" not in {
            name.lower() for name, _ in settings.set_headers
        }
        self.version = settings.http_version.encode()
        overridden = {name.lower() for name, _ in settings.set_headers}
        headers: list[tuple[bytes, Template]] = []
        if "host" not in overridden:
            headers.append((b"Host", _HOST_TEMPLATE))
        if "connection" not in overridden:
            headers.append((b"Connection", _CLOSE_TEMPLATE))
        headers.extend((name.encode("latin-1"), value) for name, value in settings.set_headers)
        # headers whose value is known now (constants, and $proxy_host of a fixed upstream) are
        # encoded once; only the ones that depend on the request are rendered per request
        static: list[bytes] = []
        dynamic: list[tuple[bytes, Template]] = []
        for name, template in headers:
            if template.is_constant:
                value: str | None = template.text
            elif template.parts == _HOST_TEMPLATE.parts and handler.upstream is not None:
                value = proxy_host_of(handler.upstream)
            else:
                value = None
            if value is None:
                dynamic.append((name, template))
            elif value:
                static.append(header_line(name, value.encode("latin-1")))
        # what follows the target: the version, and the headers known now
        self.line_end = b" HTTP/" + self.version + b"\r\n" + b"".join(static)
        self.headers = tuple(dynamic)
        # 1 for a client header passed on, 0 for one dropped or set by the location
        # the client's headers the location sets itself (beyond those never passed on, which
        # the request's skip mask marks): None when there are none, the usual case
        extra = {name.encode("latin-1") for name in overridden} - _SKIP_REQUEST_HEADERS
        self.passes = HeaderClasses(dict.fromkeys(extra, 0), 1) if extra else None
        self.pass_headers = settings.pass_request_headers  # off: only the location's go
        self.redirects = location_rules(location, handler)
        hidden = frozenset(name.encode("latin-1") for name in settings.hide_headers)
        passed = frozenset(name.encode("latin-1") for name in settings.pass_headers)
        cookies = bool(settings.cookie_domains or settings.cookie_paths or settings.cookie_flags)
        self.response_headers = (
            response_header_classes(hidden, passed, cookies)
            if hidden or passed or cookies
            else RESPONSE_HEADERS
        )
        # proxy_pass_header Server (or Date): the upstream's stands instead of upsync's
        self.own_server = b"server" not in passed
        self.own_date = b"date" not in passed

    def request_uri(self, req: Request, uri_override: str | None) -> str:
        if uri_override is not None:
            return uri_override
        rewritten = req.rewritten
        if rewritten and (self.uri is None or rewritten == 2):
            uri = quote(req.path, safe=URI_SAFE, encoding="latin-1")
            return f"{uri}?{req.query}" if req.query else uri
        if self.uri is None:
            return req.target
        rest = req.path[len(self.location.path) :] if self.location.regex is None else ""
        uri = self.uri + quote(rest, safe=URI_SAFE, encoding="latin-1")
        return f"{uri}?{req.query}" if req.query else uri

    def head(
        self,
        req: Request,
        uri: str,
        framing: bytes,
        body: bytes = b"",
        memory: HeaderMemory | None = None,
    ) -> bytes:
        """The request head for the upstream, and `body` after it. `memory`: the client
        connection's, which gives each header's line as it made it last time (a client repeats
        most of its headers), where it has it."""
        method = req.method if self.method is None else self.method.render(req).encode("latin-1")
        target = req.raw_target if uri is req.target else b""
        if len(target) == 0:  # len(), not truth: see ClientConnection._hold
            target = uri.encode("latin-1")
        # the header lines: one is kept as it is, more are joined (a list only then)
        block = b""
        more: list[bytes] | None = None
        if len(self.headers) > 0:  # the location's headers made per request
            more = []
            for name, template in self.headers:
                rendered = template.render(req)
                if rendered:
                    more.append(header_line(name, rendered.encode("latin-1")))
        if self.pass_headers:
            passes = self.passes
            skip_mask = req.skip_mask
            headers = req.headers
            for at in range(0, len(headers), 2):
                index = at >> 1
                name = headers[at]
                if not skip_mask >> index & 1 and (passes is None or passes.of(name)):
                    if memory is not None:
                        line = memory.line(index, name, headers[at + 1])
                    else:
                        line = header_line(name, headers[at + 1])
                    if more is not None:
                        more.append(line)
                    elif len(block) == 0:
                        block = line
                    else:
                        more = [block, line]
        if more is not None:
            block = b"".join(more)
        # compiled, one copy of the parts (see header_line)
        return b"%s %s%s%s%s\r\n%s" % (method, target, self.line_end, block, framing, body)


class Throttle:
    """A response under limit_rate or proxy_limit_rate: its count, the body that waits for the
    rate (the upstream is not read meanwhile), the timer that sends it on, and a completion
    that waits for it."""

    __slots__ = ("completion", "held", "limit", "timer")

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self.held: list[bytes] = []
        self.timer: asyncio.TimerHandle | None = None
        self.completion: tuple[UpstreamConnection, bool] | None = None


class ProxyExchange:
    __slots__ = (
        "body_out",
        "client",
        "client_keep_alive",
        "conn",
        "connecting",
        "finished",
        "frame",
        "group",
        "head_in_read",
        "key",
        "loop",
        "peer",
        "plan",
        "pumping",
        "req",
        "request_sent",
        "request_written",
        "response_started",
        "reused",
        "settings",
        "started",
        "streaming",
        "throttle",
        "tried",
        "tries_left",
        "until_close",
        "uri",
    )

    def __init__(
        self,
        client: "ClientConnection",
        req: Request,
        plan: ProxyPlan,
        group: UpstreamGroup,
        uri_override: str | None,
    ) -> None:
        self.client = client
        self.req = req
        self.plan = plan
        self.group = group
        self.settings: ProxySettings = plan.location.proxy
        self.loop = client.loop
        self.uri = plan.request_uri(req, uri_override)
        self.peer: Peer | None = None
        self.conn: UpstreamConnection | None = None
        self.tried: set[Peer] | None = None  # peers already tried by this request
        self.tries_left = self.settings.next_upstream_tries or group.balancer.tries
        self.started = client.read_clock()
        self.request_sent = False
        self.request_written = False  # the whole request, body included, went to the upstream
        self.pumping = False  # a spooled body is being sent
        self.response_started = False
        # the response head came in the upstream read being handled: its clock reading is
        # this read's (one reading per read, as nginx caches the time per event loop turn)
        self.head_in_read = False
        self.frame = FRAME_NONE
        self.until_close = False  # the upstream's body ends when it closes the connection
        self.client_keep_alive = False
        self.finished = False
        self.reused = False
        self.streaming = False  # request body streamed: cannot be replayed after it starts
        self.body_out: list[bytes] | None = None  # streamed body parts of the current read
        self.throttle: Throttle | None = None  # limit_rate, proxy_limit_rate of the response
        self.connecting: asyncio.Future[None] | None = None
        key_kind = group.balancer.key_kind
        if key_kind == "ip":
            self.key = req.remote_addr.encode()
        elif key_kind == "template" and group.config.method.key is not None:
            self.key = group.config.method.key.render(req).encode("latin-1")
        else:
            self.key = b""

    # the upstream read/send timeouts live on the connection, so a pooled connection re-arms its
    # timer instead of scheduling a new one per request
    def _arm(self, delay: float, now: float = -1.0) -> None:
        conn = self.conn
        if conn is not None:
            conn.timer.set(delay, now)

    def _disarm(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.timer.clear()

    def on_upstream_timeout(self) -> None:
        self._on_timeout()

    # choosing and connecting
    def start(self) -> None:
        self._try_next(self.started)

    def _try_next(self, now: float) -> None:
        group = self.group
        peer = group.balancer.pick(self.tried, now, self.key)
        req = self.req
        if peer is None:
            log.error('no live upstreams while connecting to upstream "%s"', group.name)
            req.begin_try(group.name, now)
            req.end_try(502, now)
            self._give_up(502)
            return
        peer.conns += 1
        self.peer = peer
        req.begin_try(peer.name, now)
        conn = group.pool.take(peer, now)
        if conn is not None:
            assert isinstance(conn, UpstreamConnection)
            req.try_connected = now
            self.reused = True
            self._send(conn, now)
        else:
            self._connect(peer)

    def _connect(self, peer: Peer) -> None:
        self.reused = False
        self.connecting = asyncio.ensure_future(self._open(peer), loop=self.loop)

    async def _open(self, peer: Peer) -> None:
        group = self.group
        try:
            async with asyncio.timeout(self.settings.connect_timeout or None):
                # proxy_bind: for a TCP upstream (a unix socket has no address to bind)
                bound = self.settings.bind is not None and peer.port
                local = self._local_address() if bound else None
                if local is not None:
                    conn = await self._connect_from(local, peer)
                elif peer.port:
                    _, conn = await self.loop.create_connection(
                        lambda: UpstreamConnection(peer, group.pool), peer.host, peer.port
                    )
                else:  # "unix:/path"
                    _, conn = await self.loop.create_unix_connection(
                        lambda: UpstreamConnection(peer, group.pool), peer.host[5:]
                    )
        except TimeoutError:
            self.connecting = None
            if not self.finished:
                log.error("upstream timed out while connecting to %s", peer.name)
                self._failed("timeout", 504)
            return
        except OSError as exc:
            self.connecting = None
            if self.finished:
                return
            if exc.errno in LOCAL_RESOURCE_ERRORS:
                # this process is out of descriptors or memory: not the peer's failure (nginx
                # answers 500 and leaves the peer's state alone)
                log.critical("socket() for %s failed (%s)", peer.name, exc.strerror or exc)
                self._finish_peer(failed=False)
                self._give_up(500)
                return
            log.error("connect() to %s failed (%s)", peer.name, exc.strerror or exc)
            self._failed("error", 502)
            return
        self.connecting = None
        if self.finished:
            conn.close()
            return
        self.req.try_connected = conn.born = now = self.loop.time()
        try:
            self._send(conn, now)
        except Exception:
            # nothing may leave a request hanging: a task's exception would be seen by nobody
            log.exception("error while sending a request to %s", peer.name)
            self._failed("error", 500)

    def _local_address(self) -> tuple[str, int] | None:
        """proxy_bind's address for this request, or None (off, or an empty value)."""
        template = self.settings.bind
        assert template is not None
        value = template.render(self.req)
        if not value:
            return None
        try:
            return split_address(value, default_port=0)
        except ServerLineError:
            log.error('invalid local address "%s"', value)
            return None

    async def _connect_from(self, local: tuple[str, int], peer: Peer) -> UpstreamConnection:
        """A connection from proxy_bind's address; `transparent` sets IP_TRANSPARENT first,
        so the address need not be this host's (it needs CAP_NET_ADMIN, as for nginx)."""
        group = self.group
        family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self.settings.bind_transparent:
                sock.setsockopt(socket.SOL_IP, _IP_TRANSPARENT, 1)
            sock.bind(local)
            await self.loop.sock_connect(sock, (peer.host, peer.port))
        except BaseException:
            sock.close()
            raise
        _, conn = await self.loop.create_connection(
            lambda: UpstreamConnection(peer, group.pool), sock=sock
        )
        return conn

    def _send(self, conn: UpstreamConnection, now: float) -> None:
        self.conn = conn
        conn.attach(self)
        req = self.req
        send = conn.send
        assert send is not None
        kept = req.body
        if self.plan.body is not None or req.body_dropped:
            override = self.plan.body
            body = override.render(req).encode("latin-1") if override is not None else b""
            framing = b""
            if self.settings.set_body is not None:
                framing = b"Content-Length: %d\r\n" % len(body)
            elif self.plan.length_kept and req.content_length is not None and not req.body_dropped:
                framing = b"Content-Length: %d\r\n" % req.content_length
            data = self.plan.head(req, self.uri, framing, body, self.client.memory)
            send(data)
            req.try_sent += len(data)
            self.request_written = self.request_sent = True
            self._arm(self.settings.read_timeout)
            return
        if req.body_complete and not self.streaming:
            if kept is not None and kept.spooled:
                # a body in a temporary file goes out block by block, as the upstream takes it
                data = self.plan.head(
                    req, self.uri, b"Content-Length: %d\r\n" % kept.size, b"", self.client.memory
                )
                send(data)
                req.try_sent += len(data)
                kept.rewind()
                self.request_sent = True
                self._pump()
                return
            body = kept.in_memory() if kept is not None else b""
            framing = (
                b"Content-Length: %d\r\n" % len(body)
                if (len(body) > 0 or req.content_length is not None)
                else b""
            )
            data = self.plan.head(req, self.uri, framing, body, self.client.memory)
            send(data)
            req.try_sent += len(data)
            self.request_written = True
            self._arm(self.settings.read_timeout, now)
        else:
            self.streaming = True
            if req.content_length is not None:
                framing = b"Content-Length: %d\r\n" % req.content_length
            else:
                framing = b"Transfer-Encoding: chunked\r\n"
            data = self.plan.head(req, self.uri, framing, b"", self.client.memory)
            if kept is not None:
                held = kept.take()  # at most REPLAYABLE_BODY: streaming starts past it
                if held:
                    data += self._framed(held)  # the head and what came with it, in one send
            send(data)
            req.try_sent += len(data)
            self._arm(self.settings.send_timeout)
            if req.body_complete:
                self.on_request_body_complete()
            else:
                self.client.stream_body_to(self)
        self.request_sent = True

    def _pump(self) -> None:
        """Send a spooled body while the upstream keeps up; resumed by on_upstream_writable."""
        conn = self.conn
        kept = self.req.body
        if conn is None or conn.transport is None or kept is None:
            return
        transport = conn.transport
        while not conn.write_paused:
            block = kept.read(SPOOL_BLOCK)
            if not block:
                self.pumping = False
                self.request_written = True
                self._arm(self.settings.read_timeout)
                return
            transport.write(block)
            self.req.try_sent += len(block)
        self.pumping = True
        self._arm(self.settings.send_timeout)

    def on_upstream_writable(self) -> None:
        if self.pumping:
            self._pump()

    # request body streaming (proxy_request_buffering off, or bodies too large to keep for a
    # retry): the parts of one client read leave in one send (one chunk), after the read is
    # parsed, so a last chunk and the terminator do not go as two packets, as nginx sends them
    def _framed(self, chunk: bytes) -> bytes:
        if self.req.content_length is None:
            return b"%x\r\n%s\r\n" % (len(chunk), chunk)
        return chunk

    def on_request_body(self, chunk: bytes) -> None:
        out = self.body_out
        if out is None:
            self.body_out = [chunk]
            self.loop.call_soon(self._flush_body)
        else:
            out.append(chunk)
        self._arm(self.settings.send_timeout)

    def _flush_body(self, last: bool = False) -> None:
        out = self.body_out
        self.body_out = None
        conn = self.conn
        if conn is None or conn.transport is None:
            return
        data = (out[0] if len(out) == 1 else b"".join(out)) if out else b""
        data = self._framed(data) if data else b""
        if last and self.req.content_length is None:
            data += b"0\r\n\r\n"
        if data:
            conn.transport.write(data)
            self.req.try_sent += len(data)

    def on_request_body_complete(self) -> None:
        self._flush_body(last=True)
        self.request_written = True
        self._arm(self.settings.read_timeout)

    # response
    def on_response_head(self, conn: UpstreamConnection, status: int) -> bool:
        """Returns True when no body follows (or the response is dropped for a retry)."""
        condition = STATUS_CONDITIONS.get(status) if status >= 403 else None
        if (
            condition is not None
            and condition in self.settings.next_upstream
            and self._may_retry(condition)
        ):
            conn.exchange = None
            self._failed(condition, status, closing=conn)
            return True
        req = self.req
        if status == 101 and not req.upgrade:
            # a switch nobody asked for would turn the client's connection into a raw tunnel
            # past every location rule: the answer is invalid (nginx does not tunnel it either)
            log.error(
                "upstream sent unexpected 101 Switching Protocols for a request without "
                "Upgrade from %s",
                conn.peer.name,
            )
            conn.exchange = None
            self._failed("invalid_header", 502, closing=conn)
            return True
        location = self.plan.location
        if status >= 300 and location.intercept_errors and self.client.error_page_for(req, status):
            # proxy_intercept_errors: the error page answers instead; the upstream's body is
            # not read (its connection is closed)
            conn.exchange = None
            self._intercepted(conn, status)
            return True
        accel = conn.accel
        if accel is not None:
            req.extras().upstream_accel = accel
            redirect = accel_value(accel, b"x-accel-redirect:")
            if redirect is not None and "x-accel-redirect" not in self.settings.ignore_headers:
                conn.exchange = None
                self._accel_redirect(conn, status, redirect)
                return True
        self.response_started = True
        req.try_header = self.client.connections.clock()
        self.head_in_read = True
        req.upstream_lines = conn.lines
        req.status = status
        client_keep = req.keep_alive and self.client.keep_alive_allowed(req.try_header)
        if req.status_override:
            status = req.status = req.status_override  # an error page's answer
        length = conn.length
        chunked = conn.chunked
        plan = self.plan
        own_common = plan.own_server and plan.own_date
        if own_common and status == 200:
            # the status line, Server and Date in one part, made once a second
            start = ok_head_start_at(location.server_tokens, req.try_header)
        elif own_common:
            start = status_line(status) + common_headers_at(location.server_tokens, req.try_header)
        else:
            start = status_line(status) + (
                (server_header(location.server_tokens) if plan.own_server else b"")
                + (date_header() if plan.own_date else b"")
            )
        if location.expires is not None or location.add_headers:
            expires = location.expires
            modified = (
                last_modified_of(conn.lines)
                if expires is not None and expires.kind == "modified"
                else -1.0
            )
            req.extras().headers_out = made = list(conn.lines)
            extra, replaced = header_filter(location, status, req, modified, made)
            lines = drop_headers(conn.lines, replaced) if replaced else conn.lines
            block = b"".join(lines) + extra
        else:
            lines = conn.lines
            # the head is made of a fixed number of parts: a list grown by appends is
            # reallocated as it grows
            block = lines[0] if len(lines) == 1 else b"".join(lines)
        no_body = req.method == b"HEAD" or not status_has_body(status)
        self.until_close = not no_body and status != 101 and length is None and not chunked
        framing = length_value = b""
        if status == 101:
            self.frame = FRAME_NONE
            client_keep = False
            upgrade_lines = conn.upgrade_lines
            framing = CONNECTION_UPGRADE
            if upgrade_lines is not None:
                framing += b"".join(upgrade_lines)
            end = b"\r\n"
        else:
            if no_body:
                self.frame = FRAME_NONE
                if length is not None:
                    framing = b"Content-Length: " + length + b"\r\n"
            elif (
                length is not None
                and not chunked
                and not (location.add_trailers and trailing(location, req, status))
            ):
                self.frame = FRAME_LENGTH
                framing = b"Content-Length: "
                length_value = length  # its line ends with the connection's line below
            elif req.version == "1.1" and location.chunked_transfer_encoding:
                self.frame = FRAME_CHUNKED
                framing = b"Transfer-Encoding: chunked\r\n"
            else:
                self.frame = FRAME_CLOSE
                client_keep = False
            if location.keepalive_header:
                end = head_end(client_keep, location.keepalive_header)
                if self.frame == FRAME_LENGTH:
                    end = b"\r\n" + end
            elif self.frame == FRAME_LENGTH:
                end = LENGTH_KEEP_ALIVE_END if client_keep else LENGTH_CLOSE_END
            else:
                end = KEEP_ALIVE_END if client_keep else CLOSE_END
        self.client_keep_alive = client_keep
        upstream_rate = self.settings.limit_rate
        if (plan.may_limit or req.vars or accel) and not no_body:
            rate = req.limit_rate()
            told = accel_value(accel, b"x-accel-limit-rate:") if accel is not None else None
            if told is not None and "x-accel-limit-rate" not in self.settings.ignore_headers:
                told_rate = limit_rate_value(told)
                rate = rate if told_rate is None else told_rate
            limit = limit_for(location, upstream_rate, rate, req.try_header)
            if limit is not None:
                self.throttle = Throttle(limit)
        # compiled, one copy of the parts (see header_line)
        req.sent_head = head = b"%s%s%s%s%s" % (start, block, framing, length_value, end)
        self.client.write(head)
        return no_body

    def _accel_redirect(self, conn: UpstreamConnection, status: int, target: str) -> None:
        """X-Accel-Redirect: the upstream's body is dropped and the request goes on, as a GET,
        to that URI or named location, keeping some of the upstream's headers."""
        self._disarm()
        self.req.end_try(status, self.loop.time())
        req = self.req
        req.upstream_lines = conn.lines
        kept = kept_on_redirect(conn.lines)
        conn.detach()
        conn.abort()
        self.conn = None
        self._finish_peer(failed=False)
        self.finished = True
        self.client.accel_redirect(req, target, kept)

    def _intercepted(self, conn: UpstreamConnection, status: int) -> None:
        self._disarm()
        self.req.end_try(status, self.loop.time())
        if status == 401:
            # the error page's answer keeps the upstream's challenge, as nginx's does
            challenges = [line for line in conn.lines if line[:17].lower() == b"www-authenticate:"]
            if challenges:
                self.req.extras().kept_lines = challenges
        conn.detach()
        conn.abort()
        self.conn = None
        self._finish_peer(failed=False)
        self.finished = True
        self.client.send_error(status)

    def on_response_body(self, chunk: bytes) -> None:
        throttle = self.throttle
        if throttle is not None:
            self._hold(throttle, chunk)
        elif self.frame == FRAME_CHUNKED:
            self.client.write(b"%x\r\n%s\r\n" % (len(chunk), chunk), body=len(chunk))
        else:
            self.client.write(chunk, body=len(chunk))

    def on_upstream_read(self) -> None:
        """Bytes came and the response goes on: proxy_read_timeout starts again."""
        self.head_in_read = False
        throttle = self.throttle
        if throttle is None or not throttle.held:
            self._arm(self.settings.read_timeout)

    # limit_rate, proxy_limit_rate: what came faster than the rate waits here, and the
    # upstream is not read meanwhile
    def _hold(self, throttle: "Throttle", chunk: bytes) -> None:
        throttle.held.append(chunk)
        if throttle.timer is None:
            self._release()

    def _release(self) -> None:
        throttle = self.throttle
        if throttle is None or self.finished:
            return
        throttle.timer = None
        limit, held = throttle.limit, throttle.held
        now = self.loop.time()
        allowed = limit.allowance(now)
        while held and allowed > 0:
            chunk = held.pop(0)
            if len(chunk) > allowed:
                held.insert(0, chunk[allowed:])
                chunk = chunk[:allowed]
            allowed -= len(chunk)
            limit.sent += len(chunk)
            if self.frame == FRAME_CHUNKED:
                self.client.write(b"%x\r\n%s\r\n" % (len(chunk), chunk), body=len(chunk))
            else:
                self.client.write(chunk, body=len(chunk))
        transport = self.conn.transport if self.conn is not None else None
        if held:
            if transport is not None:
                transport.pause_reading()
            self._disarm()
            waiting = sum(len(part) for part in held)
            delay = max(limit.wait_for(waiting, now), 0.001)
            throttle.timer = self.loop.call_later(delay, self._release)
            return
        completion = throttle.completion
        if completion is not None:
            throttle.completion = None
            if completion[0].transport is not None:
                completion[0].transport.resume_reading()  # it may go back to the pool
            self.on_response_complete(*completion)
        elif transport is not None:
            if not self.client.write_paused:
                transport.resume_reading()
            self._arm(self.settings.read_timeout)

    def resume_upstream(self) -> None:
        """The client takes more: read the upstream again, unless the rate holds it."""
        conn = self.conn
        throttle = self.throttle
        held = throttle is not None and throttle.held
        if not held and conn is not None and conn.transport is not None:
            conn.transport.resume_reading()

    def on_response_complete(self, conn: UpstreamConnection, keep_alive: bool) -> None:
        throttle = self.throttle
        if throttle is not None and throttle.held:
            throttle.completion = (conn, keep_alive)  # once what is held has gone
            return
        req = self.req
        if self.frame == FRAME_CHUNKED:
            location = self.plan.location
            if location.add_trailers and trailing(location, req, req.status):
                self.client.write(last_chunk(trailers_of(location, req, req.status)))
            else:
                self.client.write(b"0\r\n\r\n")
        now = req.try_header if self.head_in_read else self.loop.time()
        req.end_try(req.status, now)
        self._finish_peer(failed=False, now=now)
        conn.detach()
        self.conn = None
        # an early answer (a 401 while a large body was still streaming) leaves the rest of the
        # body unsent: the upstream would read the next request as body data
        if not (keep_alive and self.request_written and self.group.pool.put(conn, now)):
            conn.close()
        self.finished = True
        self.client.finish_response(self.client_keep_alive, now)

    def on_upstream_upgrade(self, conn: UpstreamConnection, rest: bytes) -> None:
        self._disarm()
        self.req.end_try(101, self.loop.time())
        self._finish_peer(failed=False)
        self.conn = None
        self.finished = True
        conn.detach()
        self.client.start_tunnel(conn, rest)

    def on_upstream_invalid(self, conn: UpstreamConnection, too_big: bool) -> None:
        log.error(
            "upstream sent %s while reading response header from %s",
            "too big header" if too_big else "invalid header",
            conn.peer.name,
        )
        conn.abort()
        if self.response_started:
            self._abort_client()
        else:
            self._failed("invalid_header", 502)

    def on_upstream_closed(self, conn: UpstreamConnection) -> None:
        if self.finished or conn is not self.conn:
            return
        if self.response_started:
            if self.until_close:
                self.on_response_complete(conn, keep_alive=False)
            else:
                log.error(
                    "upstream prematurely closed connection while reading upstream %s",
                    conn.peer.name,
                )
                self._finish_peer(failed=True)
                self._abort_client()
            return
        if (
            self.reused
            and not conn.received_any
            and self._replayable()
            and self._idempotent_or_allowed()
        ):
            # a cached connection the peer had already closed: not the peer's failure (as nginx);
            # the same peer is asked again on a new connection, unless the request may not be
            # sent twice (the peer may have run it before closing)
            self.conn = None
            self.request_sent = False
            assert self.peer is not None
            self._connect(self.peer)
            return
        log.error(
            "upstream prematurely closed connection while reading response header from %s",
            conn.peer.name,
        )
        self._failed("error", 502)

    # failures and retries
    def _replayable(self) -> bool:
        return not self.streaming or not self.request_sent

    def _may_retry(self, condition: str) -> bool:
        if self.tries_left <= 1 or self.response_started or self.client.closed:
            return False
        if condition not in self.settings.next_upstream:
            return False
        timeout = self.settings.next_upstream_timeout
        if timeout and self.loop.time() - self.started >= timeout:
            return False
        if self.request_sent and not self._idempotent_or_allowed():
            return False
        return self._replayable()

    def _idempotent_or_allowed(self) -> bool:
        return (
            self.req.method not in NON_IDEMPOTENT or "non_idempotent" in self.settings.next_upstream
        )

    def _failed(
        self, condition: str, status: int, closing: UpstreamConnection | None = None
    ) -> None:
        self._disarm()
        self.req.end_try(status, self.loop.time())
        conn = closing or self.conn
        self.conn = None
        if conn is not None:
            conn.detach()
            conn.abort()
        retry = self._may_retry(condition)
        peer = self.peer
        self._finish_peer(failed=condition not in NOT_FAILURES)
        if retry:
            if peer is not None:
                if self.tried is None:
                    self.tried = set()
                self.tried.add(peer)
            self.tries_left -= 1
            self.request_sent = False
            self._try_next(self.loop.time())
        else:
            self._give_up(status)

    def _finish_peer(self, failed: bool, now: float = -1.0) -> None:
        """`now`: the loop time, when the caller has read it (a float, not None: unboxed)."""
        peer = self.peer
        if peer is not None:
            self.peer = None
            release(peer, failed, self.loop.time() if now < 0 else now)
            if failed and peer.max_fails and peer.fails >= peer.max_fails:
                log.warning(
                    'upstream server temporarily disabled: "%s" in upstream "%s"',
                    peer.name,
                    self.group.name,
                )

    def _give_up(self, status: int) -> None:
        self.finished = True
        self._disarm()
        self.client.send_error(status)

    def _on_timeout(self) -> None:
        if self.finished:
            return
        peer = self.peer
        log.error("upstream timed out while reading response from %s", peer.name if peer else "?")
        if self.response_started:
            conn = self.conn
            self.conn = None
            if conn is not None:
                conn.detach()
                conn.abort()
            self._finish_peer(failed=True)
            self._abort_client()
        else:
            self._failed("timeout", 504)

    def _abort_client(self) -> None:
        self.finished = True
        self._disarm()
        self.req.end_try(self.req.status, self.loop.time())
        self.client.abort()

    def abort(self) -> None:
        """The client went away: drop the upstream side too (proxy_ignore_client_abort off)."""
        throttle = self.throttle
        if throttle is not None and throttle.timer is not None:
            throttle.timer.cancel()
            throttle.timer = None
        if self.finished:
            return
        self.finished = True
        self._disarm()
        self.req.end_try(self.req.status if self.response_started else 0, self.loop.time())
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.detach()
            conn.abort()
        self._finish_peer(failed=False)
