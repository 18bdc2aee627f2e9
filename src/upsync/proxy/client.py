"""One client connection: parses requests with httptools and answers them in order.

Pipelined requests are queued (reading pauses meanwhile); request bodies are kept for a retry
when small and streamed otherwise; response bodies flow with back-pressure both ways.
"""

import asyncio
import ipaddress
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast
from urllib.parse import quote

import httptools

from upsync.config.model import (
    AccessRule,
    LocationConfig,
    ProxyPass,
    Return,
    StaticFiles,
    UpstreamShow,
)
from upsync.proxy import error_pages, http1, rewriting, static
from upsync.proxy.accel import redirect_target
from upsync.proxy.body import RequestBody
from upsync.proxy.exchange import REPLAYABLE_BODY, URI_SAFE, trailers_of, trailing
from upsync.proxy.intake import (
    ABSOLUTE_AUTHORITY,
    CONNECTION_CLOSE,
    CONNECTION_KEEP_ALIVE,
    LINE_BARE_LF,
    LINE_HTTP09,
    LINE_HTTP10,
    LINE_HTTP11,
    LINE_UNKNOWN,
    NAME_INVALID,
    NAME_UNDERSCORED,
    bare_crs,
    browser_keepalive_disabled,
    connection_tokens,
    header_name_class,
    line_after_target,
    line_method,
    parseable_request_line,
)
from upsync.proxy.rate import RateLimit
from upsync.proxy.request import Request
from upsync.proxy.routing import (
    ServerTable,
    VirtualServer,
    header_host,
    normalize_path,
    request_host,
)
from upsync.proxy.timer import Deadline

if TYPE_CHECKING:
    from collections.abc import Mapping

    from upsync.config.maps import VariableMap
    from upsync.config.model import ErrorPage
    from upsync.generation import Generation
    from upsync.proxy.connections import OpenConnections
    from upsync.proxy.exchange import ProxyExchange, ProxyPlan
    from upsync.proxy.upstream_conn import UpstreamConnection

log = logging.getLogger("upsync.client")
# the headers of no request (read only)
_NO_HEADERS: Final[list[bytes]] = []

UPGRADE_BUFFER_LIMIT: Final = 1024 * 1024


class Http09Request(Exception):
    """The request line ends after its target (raised from the parser's callback)."""


class RelaxParser(Exception):
    """The request needs a parser lenient about line ends (raised from the parser's callback
    for a request line ending in a bare LF): the read is parsed again by one."""


class BadRequest(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


# the request headers the proxy itself looks at
_OTHER: Final = 0
_HOST: Final = 1
_CONTENT_LENGTH: Final = 2
_TRANSFER_ENCODING: Final = 3
_EXPECT: Final = 4
_UPGRADE: Final = 5
_UNDERSCORED: Final = 6
_INVALID_NAME: Final = 7
_CONNECTION: Final = 8  # hop-by-hop, and read for keep-alive
_HOP: Final = 9  # hop-by-hop: never passed on
_UNIQUE: Final = 16  # and above: a header nginx takes once (a second one is a 400), by bit


def _unlisted_header(lower_name: bytes) -> int:
    kind = header_name_class(lower_name)
    if kind == NAME_INVALID:
        return _INVALID_NAME
    return _UNDERSCORED if kind == NAME_UNDERSCORED else _OTHER


_LISTED_REQUEST_HEADERS: Final = {
    b"host": _HOST,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"expect": _EXPECT,
    b"upgrade": _UPGRADE,
    # the rest of what the upstream head never carries (exchange's _SKIP_REQUEST_HEADERS)
    **dict.fromkeys(http1.HOP_BY_HOP - {b"transfer-encoding", b"upgrade", b"connection"}, _HOP),
    b"connection": _CONNECTION,
    **{
        name: _UNIQUE << bit
        for bit, name in enumerate(
            (
                b"if-modified-since",
                b"if-unmodified-since",
                b"if-match",
                b"if-none-match",
                b"content-range",
                b"if-range",
                b"authorization",
            )
        )
    },
}
# read_at outside a read, and in one before the clock is read (loop times are never negative)
_NOT_IN_READ: Final = -1.0
_IN_READ: Final = -2.0
_REQUEST_HEADERS: Final = http1.HeaderClasses(_LISTED_REQUEST_HEADERS, _OTHER, _unlisted_header)


def excepted_method(location: LocationConfig, req: Request) -> bool:
    """A method limit_except does not name: nginx serves it with the limit_except block's
    settings, which have none of the location's rewrite phase (return, rewrite, if)."""
    limited = location.limit_except
    return limited is not None and req.method not in limited[0]


def keepalive_disabled(location: LocationConfig, req: Request) -> bool:
    user_agent = req.header(b"user-agent")
    if user_agent is None:
        return False
    return browser_keepalive_disabled(
        location.keepalive_disable_msie6,
        location.keepalive_disable_safari,
        req.method,
        user_agent,
    )


def access_allowed(rules: tuple[AccessRule, ...], address: str) -> bool:
    """allow/deny rules in order, the first match wins; no match means allowed."""
    if not rules:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for rule in rules:
        if rule.network == "all" or ip in ipaddress.ip_network(rule.network):
            return rule.allow
    return True


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "_local",
        "_remote",
        "active",
        "awaiting_first_bytes",
        "body_sink",
        "born",
        "boundary_requests",
        "closed",
        "connections",
        "corked_first",
        "corked_more",
        "corked_second",
        "corking",
        "cr_is_data",
        "cr_pending",
        "current",
        "exchange",
        "feed",
        "head_timed",
        "header_size",
        "heard",
        "heard_headers",
        "heard_url",
        "http09",
        "in_headers",
        "keepalive_time",
        "keepalive_timeout",
        "kept_alive",
        "known_request",
        "last_chunk_open",
        "last_host",
        "last_host_header",
        "last_location",
        "last_location_server",
        "last_path",
        "last_query",
        "last_server",
        "last_target",
        "last_url",
        "lenient",
        "limits",
        "line_data",
        "line_override",
        "linger_until",
        "linger_wanted",
        "loop",
        "memory",
        "parser",
        "plan",
        "queue",
        "raw_header_bytes",
        "read_at",
        "read_data",
        "read_pause_reasons",
        "relax_pending",
        "requests",
        "send",
        "sending",
        "serial",
        "site",
        "table",
        "timer",
        "transport",
        "tunnel",
        "upgrade_buffer",
        "version_hint",
        "writable",
        "write_paused",
    )

    def __init__(
        self, connections: "OpenConnections", site: "Generation", table: ServerTable
    ) -> None:
        self.connections = connections  # of this process: admission, the first-bytes timer
        self.loop = connections.loop
        self.site = site  # the configuration this connection was accepted under, for good
        self.table = table  # site's table for the address it was accepted on
        self.limits = table.default.block.limits
        self.transport: asyncio.Transport | None = None
        # strict about line ends until the client sends a bare LF where nginx takes one (a
        # request line, a chunked body's framing): then lenient, and every read is searched for
        # the bare CRs the lenient parser would take as line ends (see data_received)
        self.lenient = False
        self.relax_pending = False  # lenient from the next read on
        self.read_data: bytes | None = None  # the read being parsed strictly
        # the request whose head the current read completed, with the parser's calls that made
        # it (its target and headers as they came), until the read is parsed; whether the last
        # one asked to keep the connection alive; and a read that held one whole request, whose
        # bytes, read again, are not parsed again (see _replay_known_request)
        self.heard: Request | None = None
        self.heard_url = b""
        self.heard_headers: list[bytes] = _NO_HEADERS
        self.kept_alive = False
        self.known_request: KnownRequest | None = None
        self.parser: httptools.HttpRequestParser | None = None
        # the parser's feed_data and the transport's write, bound once the connection keeps
        # alive: a call by name looks the method up each time (about a hundred instructions),
        # and binding costs about as much, so a connection of one request goes without
        self.feed: Callable[[bytes], None] | None = None
        self.send: Callable[[bytes], None] | None = None
        self._use_parser(self._new_parser())
        self._remote: tuple[str, int] | None = None
        self._local: tuple[str, int] | None = None
        self.last_host_header: bytes | None = None
        self.last_host = ""
        self.last_server: VirtualServer | None = None  # the server last_host chose
        self.read_at = _NOT_IN_READ  # the loop's time during a read, once read (read_clock)
        # keep-alive clients often ask for one target again: the last origin-form target as
        # sent, and as text, its $uri and $args, and the location its server chose for them
        self.last_url = b""
        self.last_target = ""
        self.last_path = ""
        self.last_query = ""
        self.last_location: LocationConfig | None = None
        self.last_location_server: VirtualServer | None = None
        self.plan: ProxyPlan | None = None  # of the location last proxied to
        self.current: Request | None = None  # being parsed
        self.active: Request | None = None  # being answered
        # requests read while another is answered (pipelined): a list, as few ever wait (a
        # deque costs a block of 64 slots for every connection)
        self.queue: list[Request] = []
        self.exchange: ProxyExchange | None = None
        self.body_sink: ProxyExchange | None = None
        self.in_headers = True
        self.cr_pending = False
        self.awaiting_first_bytes = False
        self.head_timed = False
        self.header_size = 0
        self.raw_header_bytes = 0
        self.requests = 0
        self.serial = 0
        self.closed = False
        self.write_paused = False
        self.read_pause_reasons: set[str] = set()
        self.upgrade_buffer: bytes | None = None
        self.version_hint: str | None = None
        self.line_data: bytes | None = None  # a read that starts with a request line
        # the previous request's header names by position (made once the client keeps alive)
        self.memory: http1.HeaderMemory | None = None
        # the request count when a read began at a message boundary, else -1
        self.boundary_requests = -1
        # the method and target as sent, when the parser was given a stand-in request line
        self.line_override: tuple[bytes, bytes] | None = None
        self.cr_is_data = False
        self.last_chunk_open = False  # a chunk size line parsed, no data after it yet
        self.http09 = False  # the next write is an HTTP/0.9 answer's head, to be dropped
        # the client may still be sending when the connection is closed (an unread body, input
        # after a rejected head): close the write side first and read on, or the kernel resets
        # the connection and the client never sees the answer (nginx's lingering close)
        self.linger_wanted = False
        self.linger_until = 0.0  # set while lingering
        self.tunnel: asyncio.Transport | None = None
        self.timer = Deadline(self.loop, self._on_timeout, connections.clock)
        self.keepalive_timeout = 75.0
        self.keepalive_time = 3600.0
        self.born = 0.0  # loop time of the connection's start, for keepalive_time
        # writes held while corked (see cork)
        self.corking = False
        self.corked_first = b""
        self.corked_second = b""
        self.corked_more: list[bytes] | None = None
        self.writable: asyncio.Future[None] | None = None  # a file being sent waits on it
        self.sending: asyncio.Future[None] | None = None  # a large file being sent

    @property
    def local(self) -> tuple[str, int]:
        """The address the client connected to; asked of the socket only when a variable
        ($server_addr, $server_port) needs it."""
        if self._local is None:
            sock = self.transport.get_extra_info("sockname") if self.transport else None
            if isinstance(sock, (str, bytes)):  # a unix socket: its path
                self._local = ("unix:", 0)
            else:
                self._local = (str(sock[0]), int(sock[1])) if sock else ("", 0)
        return self._local

    @property
    def maps(self) -> "Mapping[str, VariableMap]":
        return self.site.config.maps

    def age(self) -> float:
        """Seconds since the connection was accepted ($connection_time)."""
        return self.loop.time() - self.born

    @property
    def remote(self) -> tuple[str, int]:
        """The client's address, asked of the socket when something first needs it (a log line,
        allow/deny, ip_hash, a header that carries it): many proxied requests never do."""
        if self._remote is None:
            peer = self.transport.get_extra_info("peername") if self.transport else None
            if isinstance(peer, (str, bytes)):  # a unix socket: nginx's "unix:"
                self._remote = ("unix:", 0)
            else:
                self._remote = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        return self._remote

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        # nginx accepts lines ended by a bare LF (the C module's own test suite sends them).
        # llhttp takes a header line so with the first flag; a request line or a chunk size line
        # needs the second too, which also lets a bare CR end a line (nginx: 400), so it is set
        # only once a client needs it. The request is re-serialised with CRLF towards the
        # upstream, so no ambiguous line ending is ever passed on.
        # Any digit.digit version is parsed so that it gets nginx's answer (505 from HTTP/2 on,
        # 1.x served as 1.1) rather than a plain 400.
        parser.set_dangerous_leniencies(
            lenient_optional_cr_before_lf=True,
            lenient_optional_lf_after_cr=self.lenient,
            lenient_version=True,
        )
        return parser

    def _relax(self) -> None:
        """From here on, bare LFs end every line, and reads are searched for bare CRs."""
        self.lenient = True
        if self.parser is not None:
            self.parser.set_dangerous_leniencies(lenient_optional_lf_after_cr=True)

    # connection lifecycle
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(
            asyncio.Transport, transport
        )  # uvloop's transports are not subclasses
        if not self.connections.admit(self):
            self.closed = True
            self.transport.abort()
            return
        self.serial = self.connections.admitted
        self.awaiting_first_bytes = True
        now = self.connections.awaiting_first_bytes.add(self, self.limits.client_header_timeout)
        self.born = now if now >= 0 else self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)  # a file being sent stops
        self.timer.cancel()
        if self.awaiting_first_bytes:
            self.awaiting_first_bytes = False
            self.connections.awaiting_first_bytes.discard(self)
        self.connections.closed(self)
        if self.exchange is not None:
            exchange, self.exchange = self.exchange, None
            exchange.abort()  # first: the upstream try it ends is in the log line
            if self.active is not None and not self.active.response_done:
                self.active.status = self.active.status or 499
                self.site.log_access(self.active)
        if self.tunnel is not None:
            self.tunnel.close()
        # the parser, the timer and the requests kept (current, active, heard) point back at
        # this object; without them it is freed by reference counting as soon as the transport
        # lets go, never left to the cyclic collector
        self.timer.release()
        self._use_parser(None)
        self.send = None
        self.current = self.active = self.heard = None
        self.queue.clear()

    def cork(self) -> None:
        """Collect writes until uncork(): a response head and body leave in one send()."""
        self.corking = True

    def uncork(self) -> None:
        if not self.corking:
            return
        self.corking = False
        first, second, more = self.corked_first, self.corked_second, self.corked_more
        if len(first) == 0:
            return
        self.corked_first = self.corked_second = b""
        self.corked_more = None
        if self.transport is None or self.closed:
            return
        if more is not None:
            self._send(b"".join([first, second, *more]))
        elif len(second) > 0:  # a head and a body: one concatenation costs less than a join
            self._send(first + second)
        else:
            self._send(first)

    def _hold(self, data: bytes) -> None:
        """A write while corked: the first two writes (a head, a body) in fields, more in a
        list, so the usual response is held without one."""
        # len(), not truth: compiled code tests a bytes object's truth by a generic call
        if len(data) == 0:
            return
        if len(self.corked_first) == 0:
            self.corked_first = data
        elif len(self.corked_second) == 0:
            self.corked_second = data
        elif self.corked_more is None:
            self.corked_more = [data]
        else:
            self.corked_more.append(data)

    def _send(self, data: bytes) -> None:
        send = self.send
        if send is not None:
            send(data)
        elif self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        self.uncork()
        transport = self.transport
        if not self.closed and transport is not None:
            self.closed = True
            mode = self.limits.lingering_close
            if (mode == "always" or (mode == "on" and self.linger_wanted)) and (
                transport.can_write_eof()
            ):
                self._linger(transport)
                return
            self.timer.cancel()
            transport.close()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Half-close: the answer is flushed and the write side shut, then whatever the client
        still sends is read and dropped for up to lingering_time, lingering_timeout per read."""
        limits = self.limits
        self.linger_until = self.loop.time() + limits.lingering_time
        self._use_parser(None)
        transport.write_eof()
        self.read_pause_reasons.clear()
        transport.resume_reading()
        self.timer.set(min(limits.lingering_timeout, limits.lingering_time))

    def _lingered(self) -> None:
        now = self.loop.time()
        if now >= self.linger_until:
            self._end_linger()
        else:
            self.timer.set(min(self.limits.lingering_timeout, self.linger_until - now))

    def _end_linger(self) -> None:
        self.timer.cancel()
        self.linger_until = 0.0
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.corking = False
        self.corked_first = self.corked_second = b""
        self.corked_more = None
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    def idle(self) -> bool:
        return self.active is None and self.current is None and self.tunnel is None

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.tunnel is not None:
            self.tunnel.pause_reading()
        elif self.exchange is not None and self.exchange.conn is not None:
            transport = self.exchange.conn.transport
            if transport is not None:
                transport.pause_reading()
        self.timer.set(self.limits.send_timeout)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        if self.tunnel is not None:
            self.tunnel.resume_reading()
        elif self.exchange is not None:
            self.exchange.resume_upstream()
        if self.active is not None:
            self.timer.clear()

    def pause_reading_for(self, reason: str) -> None:
        if not self.read_pause_reasons and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.read_pause_reasons.add(reason)

    def resume_reading_for(self, reason: str) -> None:
        self.read_pause_reasons.discard(reason)
        if not self.read_pause_reasons and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _on_timeout(self) -> None:
        # client_header_timeout, client_body_timeout, keepalive_timeout, send_timeout: nginx
        # closes the connection without an answer in each case.
        if self.linger_until:
            self._end_linger()
            return
        self.abort() if self.write_paused else self.close()

    # incoming bytes
    def data_received(self, data: bytes) -> None:
        self.read_at = _IN_READ
        try:
            self._received(data)
        finally:
            self.read_at = _NOT_IN_READ  # the next read's time is read again

    def read_clock(self) -> float:
        """The event loop's time, read once per read of this connection (nginx reads its time
        once per event loop turn): what a read starts is timed from it. Outside a read (a
        queued request started by an upstream's read) it is read each time, never kept."""
        now = self.read_at
        if now >= 0:
            return now
        clock = self.connections.clock()
        if now == _IN_READ:
            self.read_at = clock
        return clock

    def _received(self, data: bytes) -> None:
        if self.awaiting_first_bytes:
            self.awaiting_first_bytes = False
            self.connections.awaiting_first_bytes.discard(self)
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.linger_until:
            self._lingered()  # dropped
            return
        if self.upgrade_buffer is not None:
            # bytes for the tunnel, held until the upstream agrees to switch protocols
            self.upgrade_buffer += data
            if len(self.upgrade_buffer) > UPGRADE_BUFFER_LIMIT:
                self.abort()
            return
        parser = self.parser
        if self.closed or parser is None:
            return
        at_boundary = self.in_headers and self.current is None
        # the request line is read from the data when the parser has found its target
        self.line_data = data if at_boundary else None
        self.boundary_requests = self.requests if at_boundary else -1
        if not self.lenient:
            # the strict parser refuses every bare CR in a head and in chunk framing itself
            self.read_data = data
            known = self.known_request
            if (
                at_boundary
                and known is not None
                and data == known.data
                and self.kept_alive  # else the parser would refuse a request after the last
            ):
                fed = self._replay_known_request(known)
            else:
                fed = self._feed(data, 0, len(data))
                if fed and at_boundary:
                    self._learn_request(data)
            heard = self.heard
            if heard is not None:
                # an idle keep-alive connection holds no request of its own
                self.kept_alive = heard.keep_alive
                self.heard = None
                self.heard_headers = _NO_HEADERS
            self.read_data = None
            if self.relax_pending:
                self.relax_pending = False
                self._relax()
            if fed:
                self._after_read(data)
            return
        if self.cr_pending:
            # the previous read ended with a CR inside a head: it must have been a line's end
            self.cr_pending = False
            if data[0] != 10:
                self._reject(400)
                return
        start = 0
        for at in bare_crs(data):
            # rare: feed up to the bare CR to learn whether it falls in a head or in a body
            if not self._feed(data, start, at):
                return
            if self.in_headers:
                self._reject(400)
                return
            start = at
            current = self.current
            if current is not None and current.chunked:
                # in a chunked body a bare CR is data only inside a chunk; one in the framing
                # (`3\rabc`) would end a line for the parser and not for the upstream
                self.cr_is_data = False
                if not self._feed(data, at, at + 1):
                    return
                if self.current is current and not self.cr_is_data:
                    self._reject(400)
                    return
                start = at + 1
        if not self._feed(data, start, len(data)):
            return
        if self.in_headers and data[-1] == 13:
            self.cr_pending = True
        self._after_read(data)

    def _learn_request(self, data: bytes) -> None:
        """After a read that started at a request's start was parsed: when it held one whole
        request without a body, which keeps the connection alive, and the parser needed no
        leniency for it, keep the read with the calls the parser made for it."""
        req = self.heard
        if (
            req is None
            or self.current is not None  # a request still being read
            or self.requests != self.boundary_requests + 1
            or not req.keep_alive  # the parser refuses what follows a last request
            or req.chunked
            or req.content_length
            or req.upgrade
            or self.version_hint is None  # the request line was not read from this read
            or self.relax_pending
            or self.lenient
        ):
            return
        known = self.known_request
        if known is None:
            self.known_request = KnownRequest(data, self.heard_url, self.heard_headers)
        else:
            known.data = data
            known.url = self.heard_url
            known.headers = self.heard_headers

    def _replay_known_request(self, known: "KnownRequest") -> bool:
        """A read that is the same bytes as a known one is one whole request without a body,
        which the parser would take as it took them (the connection is as strict, and its
        last request kept it alive): its calls are made again instead, and every rule they
        apply is applied again. The parser, between two messages, is left as it was."""
        parser = self.parser
        try:
            self.on_message_begin()
            self.on_url(known.url)
            headers = known.headers
            for at in range(0, len(headers), 2):
                self.on_header(headers[at], headers[at + 1])
            self.on_headers_complete()
            self.on_message_complete()
        except Exception as cause:
            self._refuse(cause)
            return False
        return not self.closed and self.parser is parser

    def _after_read(self, data: bytes) -> None:
        """What follows the parsing of a whole read."""
        if self.last_chunk_open and data.endswith(b"\n\n"):
            # "0\n\n" ends a chunked body with bare LFs, as nginx takes it; the parser waits for
            # one byte of lookahead first, which a client that sent its last request never sends
            self.last_chunk_open = False
            if self.parser is None or not self._feed(b"\n", 0, 1):
                return
        if self.active is None and self.queue:
            self._advance()  # requests queued while the read was parsed (a retired generation)
            if self.closed:
                return
        if self.in_headers and self.current is not None:
            # a request head still incomplete: client_header_timeout runs from its first bytes
            # for the whole head (a head complete in one read, the usual case, needs no timer)
            if not self.head_timed:
                self.head_timed = True
                self.timer.set(self.limits.client_header_timeout)
            self.raw_header_bytes += len(data)
            if self.raw_header_bytes > self.limits.header_buffer_size:
                self._reject(400, "Request Header Or Cookie Too Large")

    def _use_parser(self, parser: httptools.HttpRequestParser | None) -> None:
        self.parser = parser
        self.feed = None  # bound again once the connection keeps alive

    def _feed(self, data: bytes, start: int, end: int) -> bool:
        """Parse data[start:end] with the current parser; False when reading this connection
        stops here (rejected, or the rest belongs to an upgraded protocol)."""
        if start == end:
            return True  # nothing to parse (the parser would report an empty body piece)
        parser = self.parser
        feed = self.feed
        chunk = data if start == 0 and end == len(data) else data[start:end]
        try:
            if feed is not None:
                feed(chunk)
            else:
                assert parser is not None
                parser.feed_data(chunk)
        except httptools.HttpParserUpgrade as upgrade:
            self.upgrade_buffer = data[start + upgrade.args[0] :]
            return False
        except httptools.HttpParserError as error:
            failure = error
            cause = error.__context__
        else:
            return not self.closed and self.parser is parser
        # handled here, out of the except clause: a parse again would chain its own errors to
        # this one, and their cause (the callback's exception) would be lost
        if (
            isinstance(
                failure,
                (httptools.HttpParserInvalidMethodError, httptools.HttpParserInvalidURLError),
            )
            and start == 0
            and end == len(data)
            and self.boundary_requests >= 0
            and self.requests == self.boundary_requests + 1
        ):
            return self._feed_stand_in(data)
        if isinstance(cause, RelaxParser):
            return self._feed_relaxed(data)
        if isinstance(cause, Http09Request):
            return self._serve_http09(data)
        self._refuse(cause)
        return False

    def _refuse(self, cause: BaseException | None) -> None:
        """The answer to a request the parser or a callback refused (`cause`: the callback's
        exception, if one raised): its status for a BadRequest, 500 for a failure of upsync's
        own, else 400."""
        if isinstance(cause, BadRequest):
            self._reject(cause.status)
        elif cause is not None and not isinstance(cause, httptools.HttpParserError):
            log.error("error while handling a request from %s", self.remote[0], exc_info=cause)
            self._reject(500)
        else:
            self._reject(400)

    def _feed_relaxed(self, data: bytes) -> bool:
        """The read's first request line ends with a bare LF: the read is parsed again, from
        that line on, by a lenient parser (raised from on_url, so nothing of the request was
        acted on)."""
        self.requests -= 1
        self.current = None
        self.in_headers = True
        self.lenient = True
        self._use_parser(self._new_parser())
        self.data_received(data)
        return False

    def _relax_live(self) -> None:
        """Lenient from here on, in the middle of a read (a chunked body's framing, a request
        line not seen whole, may end lines with bare LFs, which nginx takes): the rest of this
        read is parsed leniently when it has no bare CR the lenient parser would misread (the
        strict parser refused any before here); else strictly, and the next read on
        leniently."""
        data = self.read_data
        if data is not None and bare_crs(data):
            self.relax_pending = True
        else:
            self._relax()

    def _serve_http09(self, data: bytes) -> bool:
        """A request line without a version (HTTP/0.9): only a GET, on a fresh connection, is
        served as nginx does, as HTTP/1.0 without headers, answered with the body alone (no
        head), then closed; nothing after the line is read. Else the error page alone."""
        if self.requests > 1 or not data.startswith(b"GET "):
            tokens = self.table.default.block.fallback.server_tokens
            self._write_and_close(http1.error_body(400, tokens))
            return False
        self.http09 = True
        self.requests -= 1
        self.current = None
        self.in_headers = True
        line = data[: data.find(b"\n")].rstrip(b"\r") + b" HTTP/1.0\r\n\r\n"
        self._use_parser(self._new_parser())
        self._feed(line, 0, len(line))
        return False

    def _feed_stand_in(self, data: bytes) -> bool:
        """The read's first request line was refused by the parser; nginx takes some of those
        (an unknown method, raw UTF-8 in the target): parse it again with a stand-in line the
        parser accepts, and restore the method and target as sent."""
        self.boundary_requests = -1
        fixed = parseable_request_line(data)
        if fixed is None:
            self._reject(400)
            return False
        stand_in, method, target = fixed
        self.requests -= 1
        self.current = None
        self.in_headers = True
        self.line_override = (method, target)
        if not self.lenient and stand_in[stand_in.find(b"\n") - 1] != 13:
            # a request line ending with a bare LF: as _feed_relaxed, where a bare CR anywhere
            # in the read is refused (it was before the stand-in was tried, when lenient)
            self.lenient = True
            if bare_crs(stand_in):
                self._reject(400)
                return False
        self.line_data = stand_in
        self._use_parser(self._new_parser())
        return self._feed(stand_in, 0, len(stand_in))

    def _reject(self, status: int, reason: str = "") -> None:
        """Input that cannot be parsed or accepted: answer, then close the connection.

        Requests already answered in full come first; a request whose answer is under way is cut.
        """
        if reason:
            log.info("client %s: %s", self.remote[0], reason)
        active = self.active
        self._use_parser(self._new_parser())  # nothing after this is read
        self.pause_reading_for("rejected")
        self.linger_wanted = True
        if active is not None and active is self.current and active.response_done:
            self.close()  # answered already; the rest of its body was bad
            return
        if active is None or (active is self.current and not active.response_done):
            if active is not None and self.exchange is not None:
                if self.exchange.response_started:
                    self.abort()
                    return
                self.exchange.abort()
            self.current = None
            if active is None:
                active = Request(self)
                active.path = ""  # none was parsed
            req = self.active = active
            req.keep_alive = False
            req.body_complete = True
            if req.location is None:
                # the default server's error_page applies, as nginx answers with its settings
                req.server = self.table.default
                req.location = self.table.default.block.fallback
                req.host = ""  # not a host this request gave validly
            self.send_error(status)
            return
        # a pipelined request behind one still being answered: its error waits its turn (in
        # place of the request itself when its head was queued and its body went bad)
        current = self.current
        req = current if current is not None and current in self.queue else Request(self)
        req.status = status
        req.keep_alive = False
        req.body_complete = True
        if req is not current:
            self.queue.append(req)
        self.current = None

    def _write_and_close(self, data: bytes) -> None:
        self.write(data)  # behind any corked response: answers leave in request order
        self.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.head_timed = False
        self.version_hint = None  # until on_url reads it from the request line
        self.current = req = Request(self, http1.wall_time_at(self.read_clock()))
        self.in_headers = True
        self.header_size = 0
        self.requests += 1
        req.nth = self.requests
        # behind another request's bytes in the same read (nginx's $pipe)
        boundary = self.boundary_requests
        req.pipelined = boundary < 0 or self.requests > boundary + 1

    def on_url(self, url: bytes) -> None:
        req = self.current
        assert req is not None
        data = self.line_data
        if data is not None and not req.target:
            self.line_data = None
            line = line_after_target(data, len(url))
            if line == LINE_HTTP11:
                self.version_hint = "1.1"
                req.method = line_method(data)
            elif line == LINE_HTTP10:
                self.version_hint = "1.0"
                req.method = line_method(data)
            elif line == LINE_HTTP09:
                raise Http09Request()
            elif line & LINE_BARE_LF and not self.lenient:
                raise RelaxParser()
            elif line == LINE_UNKNOWN and not self.lenient:
                self._relax_live()  # the line goes on in the next read: it may end with a bare LF
        elif self.version_hint is None and not self.lenient:
            # a request line that does not start its read (pipelined behind another, or cut
            # by TCP): where it ends is not seen here, and it may end with a bare LF
            self._relax_live()
        if req.target:
            req.target += url.decode("latin-1")
            req.raw_target += url
        elif url == self.last_url:
            req.target = self.last_target  # the object _check_request knows again
            req.raw_target = url
        else:
            req.target = url.decode("latin-1")
            req.raw_target = url
        self.header_size += len(url)
        if len(req.target) > self.limits.line_size:
            raise BadRequest(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_headers:
            return  # a chunked body's trailer: dropped, as nginx does, never a request header
        req = self.current
        assert req is not None
        line = len(name) + len(value) + 4
        self.header_size += line
        if self.header_size > self.limits.header_buffer_size or line > self.limits.line_size:
            raise BadRequest(400)
        headers = req.headers
        headers.append(name)
        headers.append(value)

    def on_headers_complete(self) -> None:
        req = self.current
        assert req is not None
        self.heard = req
        self.heard_url = req.raw_target  # the target as the parser gave it
        self.heard_headers = req.headers  # replaced, never changed, when names are dropped
        self.in_headers = False
        self.raw_header_bytes = 0
        req.head_size = self.header_size
        parser = self.parser
        assert parser is not None
        version = self.version_hint
        if version is None:
            req.method = parser.get_method()  # else on_url read it with the version
            version = parser.get_http_version()
            if version not in ("1.1", "1.0"):
                # nginx: 505 from HTTP/2 on; any other 1.x is served as 1.1
                if version[:2] == "1.":
                    version = "1.1"
                else:
                    raise BadRequest(505 if version[0] > "1" else 400)
        if self.line_override is not None:
            method, target = self.line_override
            self.line_override = None
            req.method = method
            req.target = target.decode("latin-1")
            req.raw_target = target
        req.version = version
        self._check_request(req)
        if req.chunked and not self.lenient:
            self._relax_live()
        if self.active is None and not self._drained():
            self.active = req
            self._dispatch(req)
        else:
            # behind another, or on a connection whose configuration was reloaded away: there
            # every request of the read is queued first, so the last answer knows it is last
            self.queue.append(req)
            self.pause_reading_for("pipelined")

    def on_body(self, body: bytes) -> None:
        req = self.current
        if req is None:
            return
        if body and body[-1] == 13:
            self.cr_is_data = True  # see data_received: a bare CR inside a chunk
        self.last_chunk_open = False
        req.body_size += len(body)
        if self.active is req:
            self.timer.set(self.limits.client_body_timeout)
            location = req.location
            if (
                location is not None
                and location.client_max_body_size
                and req.body_size > location.client_max_body_size
                and not req.response_done
                and not req.body_dropped
            ):
                raise BadRequest(413)
        sink = self.body_sink
        if sink is not None and self.active is req:
            sink.on_request_body(body)
            self._kept_body(req).record(body)
        elif not req.response_done and not req.body_dropped:
            kept = self._kept_body(req)
            kept.append(body)
            if (
                self.active is req
                and self.exchange is None
                and req.body_size > REPLAYABLE_BODY
                and self.site.can_stream_body(req)
            ):
                self._start_proxy_streaming(req)

    def _kept_body(self, req: Request) -> RequestBody:
        kept = req.body
        if kept is None:
            location = req.location or self.table.default.block.fallback
            kept = req.body = RequestBody(
                location.client_body_buffer_size,
                location.client_body_temp_path,
                location.client_body_in_file_only,
            )
        return kept

    def on_chunk_header(self) -> None:
        self.last_chunk_open = True  # the zero-size last chunk if no data follows

    def on_chunk_complete(self) -> None:
        self.last_chunk_open = False

    def on_message_complete(self) -> None:
        req = self.current
        if req is None:
            return
        self.current = None
        self.in_headers = True
        req.body_complete = True
        if self.active is not req:
            return
        self.timer.clear()
        if req.response_done:
            self._advance()
        elif self.body_sink is not None:
            sink, self.body_sink = self.body_sink, None
            sink.on_request_body_complete()
        elif self.exchange is None and isinstance(req.location and req.location.handler, ProxyPass):
            self._start_proxy(req)

    # request handling
    def _check_request(self, req: Request) -> None:
        target = req.target
        if req.method == b"CONNECT":
            # nginx's request-line parser takes no authority-form target: "CONNECT host:443" is
            # malformed (400); with a path it is a method nginx does not serve (405)
            raise BadRequest(405 if target.startswith("/") else 400)
        if req.method == b"TRACE":
            raise BadRequest(405)  # as nginx: never passed on (it would echo credentials)
        if target[:1] != "/":  # not startswith(): a method call costs more
            # absolute-form: its host selects the server block, never the destination
            scheme, sep, rest = target.partition("://")
            if not sep or scheme.lower() not in ("http", "https"):
                raise BadRequest(400)  # "OPTIONS *" included, as nginx
            cut = len(rest)
            for mark in ("/", "?"):
                found = rest.find(mark)
                if 0 <= found < cut:
                    cut = found
            written = rest[:cut]
            if not ABSOLUTE_AUTHORITY.fullmatch(written):
                raise BadRequest(400)
            authority = request_host(written)
            if authority is None:
                raise BadRequest(400)
            req.host = authority
            target = rest[cut:].partition("#")[0]  # passed on without its fragment, as nginx
            if not target.startswith("/"):
                target = "/" + target  # "http://host?q" asks for "/?q"
            req.target = target
            req.raw_target = b""  # not as it came: encoded when it goes upstream
        if target is self.last_target and self.last_path:
            req.path = self.last_path
            req.query = self.last_query
        else:
            whole = target is req.target and len(req.raw_target) > 0  # origin-form, as sent
            if "#" in target:
                target = target.partition("#")[0]  # a fragment is no part of $uri or $args
            if "?" in target:
                path, _, query = target.partition("?")
            else:
                path, query = target, ""
            normalized = normalize_path(path)
            if normalized is None:
                req.path = ""  # $uri of a request refused for its URI: empty, as nginx logs it
                raise BadRequest(400)
            req.path = normalized
            req.query = query
            if whole:
                self.last_url = req.raw_target
                self.last_target = req.target
                self.last_path = normalized
                self.last_query = query
                self.last_location = None
        host_header: bytes | None = None
        invalid_names = False
        unique_seen = 0
        transfer_encoding: bytes | None = None
        expect: bytes | None = None
        # the headers never passed on, by position: the upstream head is made without
        # classifying each name again
        skip_mask = 0
        connection = 0  # its tokens: close, keep-alive
        memory = self.memory
        headers = req.headers
        for at in range(0, len(headers), 2):
            index = at >> 1
            name = headers[at]
            kind = memory.kind(index, name) if memory is not None else _REQUEST_HEADERS.of(name)
            if kind == _OTHER:
                continue
            if kind <= _HOP and kind != _UNDERSCORED and kind != _INVALID_NAME:
                skip_mask |= 1 << index
            if kind >= _UNIQUE:
                if unique_seen & kind:
                    raise BadRequest(400)
                unique_seen |= kind
            elif kind == _HOST:
                if host_header is not None:
                    raise BadRequest(400)
                host_header = headers[at + 1]
            elif kind == _CONTENT_LENGTH:
                value = headers[at + 1]
                if req.content_length is not None or not value.strip().isdigit():
                    raise BadRequest(400)
                req.content_length = int(value)
            elif kind == _TRANSFER_ENCODING:
                if transfer_encoding is not None:
                    raise BadRequest(400)
                transfer_encoding = headers[at + 1]
            elif kind == _EXPECT:
                if expect is not None:
                    raise BadRequest(400)
                expect = headers[at + 1]
            elif kind == _UPGRADE:
                req.upgrade = True
            elif kind == _CONNECTION:
                connection |= connection_tokens(headers[at + 1])
            elif kind != _HOP:
                invalid_names = True
        # as the parser tells it: HTTP/1.0 keeps alive when asked to, later versions unless
        # asked not to
        if req.version == "1.0":
            req.keep_alive = bool(connection & CONNECTION_KEEP_ALIVE)
        else:
            req.keep_alive = not connection & CONNECTION_CLOSE
        if memory is None and req.keep_alive:
            self.memory = http1.HeaderMemory(_REQUEST_HEADERS)  # the next request learns it
        if transfer_encoding is not None:
            if transfer_encoding.strip().lower() != b"chunked":
                raise BadRequest(501)
            if req.version == "1.0" or req.content_length is not None:
                raise BadRequest(400)  # both framings: a smuggling attempt
            req.chunked = True
        # nginx acts on 100-continue and passes any other expectation on
        if expect is not None and expect.strip().lower() == b"100-continue":
            req.expect_continue = True
        req.skip_mask = skip_mask
        if invalid_names and self.limits.ignore_invalid_headers:
            self._drop_invalid_headers(req)
        if not req.host:
            if host_header is not None:
                if host_header == self.last_host_header:
                    req.host = self.last_host  # keep-alive clients repeat their Host
                else:
                    host = header_host(host_header)
                    if host is None:
                        raise BadRequest(400)
                    req.host = self.last_host = host
                    self.last_host_header = host_header
                    self.last_server = None
            elif req.version == "1.1":
                raise BadRequest(400)
        # no body at all: complete now, so a proxied GET is sent before on_message_complete
        req.body_complete = not req.chunked and not req.content_length

    def _drop_invalid_headers(self, req: Request) -> None:
        """ignore_invalid_headers (on by default): a name with characters nginx does not take,
        or with "_" unless underscores_in_headers, is dropped and logged; a backend that reads
        X_Real_IP as X-Real-IP could otherwise be told a forged address."""
        underscores = self.limits.underscores_in_headers
        kept: list[bytes] = []
        old_mask, skip_mask = req.skip_mask, 0
        for index, (name, value) in enumerate(req.pairs()):
            kind = _REQUEST_HEADERS.of(name)
            if kind == _INVALID_NAME or (kind == _UNDERSCORED and not underscores):
                log.info(
                    'client %s sent invalid header line: "%s"',
                    self.remote[0],
                    name.decode("latin-1"),
                )
            else:
                if old_mask >> index & 1:
                    skip_mask |= 1 << (len(kept) >> 1)  # its position among the headers kept
                kept.append(name)
                kept.append(value)
        req.headers = kept
        req.skip_mask = skip_mask

    def _dispatch(self, req: Request) -> None:
        if req.status:  # a rejected request waiting its turn
            tokens = self._answering_location(req).server_tokens
            self._write_and_close(http1.error_response(req.status, False, False, tokens))
            return
        host = req.host
        if host is self.last_host:  # the same object as the previous request's: its server
            server = self.last_server
            if server is None:
                server = self.last_server = self.table.find(host)
        else:
            server = self.table.find(host)
        req.server = server
        if server.block.rewrites:
            found = self._find_location(req, server)
        else:
            path = req.path
            remembered = self.last_location
            if (
                remembered is not None
                and path is self.last_path
                and server is self.last_location_server
            ):
                found = remembered
            else:
                found = server.locations.match(path)
                if path is self.last_path:  # reset with last_path (see _check_request)
                    self.last_location = found
                    self.last_location_server = server
            if found.rewrites or found.auto_redirect or found.internal:
                found = self._enter_location(req, found)
        if found is None:
            return  # answered
        location = found
        req.location = location
        self.keepalive_timeout = location.keepalive_timeout
        self.keepalive_time = location.keepalive_time
        if self.requests >= location.keepalive_requests:
            req.keep_alive = False
        elif req.keep_alive and (
            location.keepalive_disable_safari
            or (location.keepalive_disable_msie6 and req.method == b"POST")
        ):
            req.keep_alive = not keepalive_disabled(location, req)
        self._serve_location(req, location)

    def _find_location(self, req: Request, server: VirtualServer) -> LocationConfig | None:
        """nginx's phases before access for req.path: the server's rewrites, the location's
        choice (an auto redirect), the location's rewrites; None when one of them answered."""
        if server.block.rewrites:
            outcome = rewriting.run(server.block.rewrites, req)
            if outcome[0] == rewriting.ANSWER:
                req.location = server.block.fallback
                self._answer(req, server.block.fallback, outcome[1], outcome[2])
                return None
        return self._enter_location(req, server.locations.match(req.path))

    def _enter_location(self, req: Request, location: LocationConfig) -> LocationConfig | None:
        """The location chosen for req.path: an auto redirect, `internal`, its rewrite
        phase; the location that serves the request, or None when one of them answered."""
        if location.auto_redirect and len(location.path) == len(req.path) + 1:
            req.location = location
            self._auto_redirect(req, location)
            return None
        if location.internal and not req.redirects:
            req.location = location
            self.send_error(404)  # `internal`: reached by internal redirects only
            return None
        if location.rewrites and not excepted_method(location, req):
            return self._location_rewrites(req, location)
        return location

    def _auto_redirect(self, req: Request, location: LocationConfig) -> None:
        """nginx's auto_redirect: "/app" to "location /app/ { proxy_pass ...; }" is a 301 to
        "/app/", the arguments kept."""
        target = quote(location.path, safe=URI_SAFE, encoding="latin-1")
        self._answer(req, location, 301, target + ("?" + req.query if req.query else ""))

    def _location_rewrites(self, req: Request, location: LocationConfig) -> LocationConfig | None:
        """The location's rewrite phase; the location that serves the request, or None when
        the phase answered it. A changed URI chooses the location again (`last`, or a rewrite
        without a flag), at most MAX_URI_CHANGES times."""
        server = req.server
        assert server is not None
        for _ in range(rewriting.MAX_URI_CHANGES):
            before = req.rewritten
            req.rewritten = 0
            if req.extra is not None:
                req.extra.if_location = None
            outcome = rewriting.run(location.rewrites, req)
            changed, req.rewritten = req.rewritten, req.rewritten or before
            kind = outcome[0]
            # an `if` with other directives that held serves the request with its settings
            chosen = (req.extra.if_location if req.extra is not None else None) or location
            if kind == rewriting.ANSWER:
                req.location = chosen
                self._answer(req, chosen, outcome[1], outcome[2])
                return None
            if kind == rewriting.BREAK:
                if changed:
                    req.rewritten = 2
                return chosen
            if kind == rewriting.NEXT and not changed:
                return chosen
            location = server.locations.match(req.path)
            if not location.rewrites:
                return location
        log.error('rewrite or internal redirection cycle while processing "%s"', req.path)
        req.location = location
        self.send_error(500)
        return None

    def _serve_location(self, req: Request, location: LocationConfig) -> None:
        """The location's body limit, access rules and handler, in nginx's phase order (a
        `return` comes from the rewrite phase, before access rules); again for an error page."""
        if location.access_logs:
            # the access log line may be written after the client has gone (499), when the
            # socket can no longer tell its peer
            _ = self.remote
        limit = location.client_max_body_size
        if (
            limit
            and req.content_length is not None
            and req.content_length > limit
            and not req.body_dropped
        ):
            req.keep_alive = False
            self.send_error(413)
            return
        rules = location.access
        limited = location.limit_except
        if limited is not None and req.method not in limited[0]:
            rules = limited[1]  # limit_except: the other methods meet its rules
        elif isinstance(location.handler, Return):
            self._send_return(req, location, location.handler)
            return
        if rules and not access_allowed(rules, req.remote_addr):
            log.error(
                'access forbidden by rule, client: %s, request: "%s"', req.remote_addr, req.target
            )
            self.send_error(403)
            return
        if location.try_files and not self._tried_files(req, location):
            return  # the last resort answered
        handler = location.handler
        if isinstance(handler, Return):
            handler = location.files  # a method limit_except excepts: no rewrite phase
        if isinstance(handler, ProxyPass):
            has_body = (req.chunked or bool(req.content_length)) and not req.body_dropped
            if req.expect_continue and req.version == "1.1" and not req.redirects:
                # as nginx, whenever the body is to be read: with none (Content-Length: 0) too
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if req.body_complete or not has_body:
                self._start_proxy(req)
            elif self._streams_body(req, location):
                self._start_proxy_streaming(req)
            else:
                self.timer.set(self.limits.client_body_timeout)
            return
        if isinstance(handler, Return):
            self._send_return(req, location, handler)
        elif isinstance(handler, UpstreamShow):
            status, content_type, body = self.site.show_upstreams(req, self.loop.time())
            self.send_simple(status, body, content_type)
        elif isinstance(handler, StaticFiles):
            self._serve_file(req, location, handler)
        else:
            self.send_error(404)

    def _streams_body(self, req: Request, location: LocationConfig) -> bool:
        """Whether the body goes upstream as it arrives: with proxy_request_buffering off
        (unless it must land in a file first), or when it is too large to keep for a retry."""
        buffered = location.proxy.request_buffering or location.client_body_in_file_only != "off"
        if buffered and (req.content_length is None or req.content_length <= REPLAYABLE_BODY):
            return False
        return self.site.can_stream_body(req)

    # files
    def _tried_files(self, req: Request, location: LocationConfig) -> bool:
        """try_files: True when one of the files exists (the request goes on in this location
        with that URI); else its last resort answers (a URI, a named location, =CODE)."""
        files = location.files
        assert files is not None
        *candidates, last = location.try_files
        for candidate in candidates:
            uri = candidate.render(req)
            path = static.file_path(files, location, uri)
            directory = candidate.parts[-1].endswith("/")  # as written: "$uri/"
            if os.path.isdir(path) if directory else os.path.isfile(path):
                # the request goes on with this URI (a directory's without its slash, as
                # nginx); what goes upstream stays the request's own
                req.path = uri[:-1] if directory and len(uri) > 1 else uri
                return True
        target = last.render(req)
        if target.startswith("="):
            code = int(target[1:]) if target[1:].isdigit() else 500
            self._answer(req, location, code, None)
            return False
        self._redirect_internally(req, target, keep_args=True)
        return False

    def _redirect_internally(
        self, req: Request, target: str, keep_args: bool, path: str | None = None
    ) -> None:
        """An internal redirect (index, try_files, error_page, X-Accel-Redirect): to a named
        location, or to a URI whose location is chosen again, rewrite phases included; at
        most MAX_REDIRECTS per request. `keep_args`: a URI without "?" keeps the arguments;
        `path`: a decoded path given apart (then `target` is unused)."""
        server = req.server
        assert server is not None
        if req.redirects >= error_pages.MAX_REDIRECTS:
            log.error('rewrite or internal redirection cycle while "%s"', req.path)
            req.status_override = 0
            self.send_error(500)
            return
        req.redirects += 1
        chosen: LocationConfig | None
        if target.startswith("@"):
            chosen = server.block.named.get(target)
            if chosen is None:
                log.error('could not find named location "%s"', target)
                req.status_override = 0
                self.send_error(500)
                return
        else:
            if path is None:
                path, question, query = target.partition("?")
                if question or not keep_args:
                    req.query = query
            req.path = path
            req.rewritten = req.rewritten or 1
            # as a new request: the server's rewrites too (nginx's internal redirect)
            chosen = self._find_location(req, server)
            if chosen is None:
                return  # a rewrite phase answered
        req.location = chosen
        self._serve_location(req, chosen)

    def accel_redirect(self, req: Request, target: str, kept: list[bytes]) -> None:
        """An upstream's X-Accel-Redirect: the request goes on, as a GET (HEAD stays HEAD)
        without its body, to that URI (percent-decoded; one with a ".." segment is a 404) or
        named location; the upstream headers nginx keeps go with the answer."""
        self.exchange = None
        self.body_sink = None
        if kept:
            req.extras().kept_lines = kept
        req.body_dropped = True  # what is left of it is read and dropped
        self.resume_reading_for("upstream")
        self.resume_reading_for("connecting")
        if target.startswith("@"):
            self._redirect_internally(req, target, keep_args=True)  # the method kept
            return
        if req.method != b"HEAD":
            req.method = b"GET"
        parsed = redirect_target(target)
        if parsed is None:
            log.error('X-Accel-Redirect "%s" is unsafe', target)
            self.send_error(404)
            return
        path, args = parsed
        req.query = args
        # the path goes as decoded: a "?" in it is no argument separator
        self._redirect_internally(req, "", keep_args=True, path=path)

    def _serve_file(self, req: Request, location: LocationConfig, handler: StaticFiles) -> None:
        found = static.find(handler, location, req.path, req.method)
        if found.index_uri:
            # nginx's index module: the index file's URI is served as an internal redirect
            self._redirect_internally(req, found.index_uri, keep_args=True)
            return
        if found.redirect_slash:
            target = quote(req.path, safe=URI_SAFE, encoding="latin-1") + "/"
            self._answer(req, location, 301, target + ("?" + req.query if req.query else ""))
            return
        if found.status != 200:
            if found.status == 404:
                log.error('open() "%s" failed (No such file or directory)', req.path)
            self.send_error(found.status)
            return
        keep = req.keep_alive and self.keep_alive_allowed()
        unchanged = static.not_modified(
            found, req.header(b"if-modified-since"), req.header(b"if-none-match")
        )
        status = 304 if unchanged else (req.status_override or 200)
        req.status = status
        own = static.validators(found)
        if location.expires is not None or location.add_headers:
            req.extras().headers_out = made = list(own)
            extra, replaced = http1.header_filter(location, status, req, found.mtime, made)
            own = http1.drop_headers(own, replaced) if replaced else own
            extra = b"".join(own) + extra
        else:
            extra = b"".join(own)
        chunked = trailing(location, req, status)
        content_type = static.content_type(location, found.path).encode("latin-1")
        kept_lines = req.kept_lines()
        if kept_lines is not None:  # after an X-Accel-Redirect: the upstream's headers
            content_type, kept = http1.split_content_type(kept_lines, content_type)
            extra += kept
        described = b"Content-Type: %s\r\n%s" % (
            content_type,
            b"Transfer-Encoding: chunked\r\n"
            if chunked
            else b"Content-Length: %d\r\n" % found.size,
        )
        head = (
            http1.status_line(status)
            + http1.common_headers(location.server_tokens)
            + (b"" if unchanged else described)
            + extra
            + http1.head_end(keep, location.keepalive_header)
        )
        if unchanged or req.method == b"HEAD":
            self._write_response(req, head, 0)
            self.finish_response(keep)
            return
        rate = req.limit_rate() if location.limit_rate is not None or req.vars else 0
        limit = RateLimit(rate, location.limit_rate_after, self.loop.time()) if rate else None
        try:
            with open(found.path, "rb") as handle:
                if found.size <= static.WHOLE_FILE and limit is None:
                    body = handle.read()
                    size = len(body)
                    if chunked:
                        body = http1.chunked_whole(body, trailers_of(location, req, status))
                    self._write_response(req, head + body, size)
                    self.finish_response(keep)
                    return
        except OSError as exc:
            log.error('open() "%s" failed (%s)', found.path, exc.strerror or exc)
            self.send_error(403 if isinstance(exc, PermissionError) else 404)
            return
        self._write_response(req, head, 0)
        self.sending = asyncio.ensure_future(self._send_file(req, found.path, keep, chunked, limit))

    async def _send_file(
        self, req: Request, path: str, keep: bool, chunked: bool, limit: RateLimit | None
    ) -> None:
        """A large file (or one under limit_rate), block by block as the client takes it (as
        chunks, with trailers)."""
        try:
            with open(path, "rb") as handle:
                while not self.closed:
                    size = static.BLOCK
                    if limit is not None:
                        size = max(1, min(size, limit.rate))
                        delay = limit.wait_for(size, self.loop.time())
                        if delay:
                            await asyncio.sleep(delay)  # limit_rate: the next block's moment
                        limit.sent += size
                    block = handle.read(size)
                    if not block:
                        if chunked and req.location is not None:
                            trailers = trailers_of(req.location, req, req.status)
                            self.write(http1.last_chunk(trailers))
                        break
                    if chunked:
                        self.write(b"%x\r\n%s\r\n" % (len(block), block), body=len(block))
                    else:
                        self.write(block, body=len(block))
                    if self.write_paused:
                        self.writable = self.loop.create_future()
                        await self.writable
                        self.writable = None
        except OSError as exc:
            log.error('read() "%s" failed (%s)', path, exc.strerror or exc)
            self.abort()
            return
        if not self.closed and self.active is req:
            self.finish_response(keep)

    def _send_return(self, req: Request, location: LocationConfig, handler: Return) -> None:
        text = handler.text.render(req) if handler.text is not None else None
        self._answer(req, location, handler.code, text)

    def _answer(self, req: Request, location: LocationConfig, code: int, text: str | None) -> None:
        """What `return CODE [TEXT|URL]` (or a rewrite's redirect) sends."""
        if code == 444:
            req.status = 444
            self.site.log_access(req)
            self.abort()
            return
        if code in (301, 302, 303, 307, 308) and text is not None:
            if self.error_page_for(req, code) is not None:
                self._to_error_page(req, code)  # its answer, without this one's Location
                return
            req.status_override = 0  # a redirect keeps its status, as an error page's answer too
            body = http1.error_body(code, location.server_tokens)
            target = self.absolute_location(req, location, text.encode("latin-1"))
            self.send_simple(code, body, b"text/html", extra=b"Location: " + target + b"\r\n")
        elif text is not None:
            self.send_simple(code, text.encode("latin-1"), location.default_type.encode())
        elif code >= 400 or code in (301, 302, 303, 307, 308):
            self.send_error(code)
        else:
            self.send_simple(code, b"", location.default_type.encode())

    def _plan_for(self, req: Request) -> "ProxyPlan":
        """The proxy plan of the request's location: the previous request's, most often."""
        location = req.location
        plan = self.plan
        if plan is None or plan.location is not location:
            assert location is not None
            plan = self.plan = self.site.plans[id(location)]
        return plan

    def _start_proxy(self, req: Request) -> None:
        exchange = self.site.start_exchange(self, req, self._plan_for(req))
        if exchange is not None:
            self.exchange = exchange
            exchange.start()

    def _start_proxy_streaming(self, req: Request) -> None:
        exchange = self.site.start_exchange(self, req, self._plan_for(req))
        if exchange is not None:
            self.exchange = exchange
            exchange.streaming = True
            self.pause_reading_for("connecting")
            exchange.start()

    def stream_body_to(self, exchange: "ProxyExchange") -> None:
        self.body_sink = exchange
        self.resume_reading_for("connecting")

    # responses
    def keep_alive_allowed(self, now: float = -1.0) -> bool:
        """`now`: the loop time, when the caller has read it."""
        if self.keepalive_timeout <= 0:
            return False
        if (self.loop.time() if now < 0 else now) - self.born >= self.keepalive_time:
            return False  # keepalive_time: the connection's last response says close
        # a connection of a configuration that was reloaded away (or of a process that quits)
        # answers what it has already received, and closes after the last of it: no request it
        # sent is left unanswered
        return not self._drained() or len(self.queue) > 0

    def _drained(self) -> bool:
        """Whether this connection's configuration was reloaded away and its moment to close
        (a share of the generation's drain window, the same for a connection's whole life)
        has come."""
        site = self.site
        if not site.retired:
            return False
        return self.loop.time() >= site.drain_moment(((id(self) >> 4) % 61) / 61.0)

    def write(self, data: bytes, body: int = 0) -> None:
        if self.http09:
            # an HTTP/0.9 answer is its body alone: the head (always one write) is dropped
            self.http09 = False
            data = data[data.find(b"\r\n\r\n") + 4 :]
        if self.corking:
            self._hold(data)
        elif self.transport is not None and not self.closed:
            self._send(data)
        if body and self.active is not None:
            self.active.bytes_sent += body

    def send_simple(
        self, status: int, body: bytes, content_type: bytes, extra: bytes = b""
    ) -> None:
        req = self.active
        assert req is not None
        keep = req.keep_alive and self.keep_alive_allowed()
        status = req.status_override or status
        req.status = status
        location = self._answering_location(req)
        kept_lines = req.kept_lines()
        if kept_lines is not None:
            content_type, kept = http1.split_content_type(kept_lines, content_type)
            extra += kept
        if location.expires is not None or location.add_headers:
            made: list[bytes] = []
            req.extras().headers_out = made
            extra += http1.header_filter(location, status, req, made=made)[0]
        self._send_whole(req, location, status, body, content_type, keep, extra)

    def _write_response(self, req: Request, response: bytes, body_size: int) -> None:
        req.sent_head = response[: len(response) - body_size]
        req.bytes_sent = body_size
        self.write(response)

    def send_error(self, status: int) -> None:
        req = self.active
        if req is None:
            return
        self.exchange = None
        self.body_sink = None
        if not self.closed and self.error_page_for(req, status) is not None:
            self._to_error_page(req, status)
            return
        # an error upsync answers itself keeps its own status, also as an error page's answer
        # (nginx's special response handler sets err_status to it)
        req.status_override = 0
        # an unread body would be taken for the next request: close instead
        keep = req.keep_alive and self.keep_alive_allowed() and req.body_complete
        if not req.body_complete:
            self.linger_wanted = True
        req.status = status
        location = self._answering_location(req)
        tokens = location.server_tokens
        extra = b""
        kept_lines = req.kept_lines()
        if kept_lines is not None:  # after an X-Accel-Redirect, an error page keeps them
            extra = http1.split_content_type(kept_lines, b"")[1]
        if location.add_headers:
            made: list[bytes] = []
            req.extras().headers_out = made
            extra += http1.header_filter(location, status, req, made=made)[0]
        if status not in http1.PAGED_CODES:
            # as nginx: no page of its own for this code, an empty answer
            response = (
                http1.status_line(status)
                + http1.common_headers(tokens)
                + b"Content-Length: 0\r\n"
                + extra
                + http1.head_end(keep, location.keepalive_header)
            )
            self._write_response(req, response, 0)
            self.finish_response(keep)
            return
        body = http1.error_body(status, tokens)
        self._send_whole(req, location, status, body, b"text/html", keep, extra)

    def _send_whole(
        self,
        req: Request,
        location: LocationConfig,
        status: int,
        body: bytes,
        content_type: bytes,
        keep: bool,
        extra: bytes,
    ) -> None:
        """An answer made whole here (`return`, an error page): chunked with trailers when
        add_trailer applies, the body left out for HEAD."""
        head_only = req.method == b"HEAD"
        trailers = trailers_of(location, req, status) if trailing(location, req, status) else None
        response = http1.simple_response(
            status,
            body,
            content_type,
            keep,
            head_only,
            extra,
            location.server_tokens,
            trailers,
            location.keepalive_header,
        )
        self._write_response(req, response, 0 if head_only else len(body))
        self.finish_response(keep)

    # error_page
    def error_page_for(self, req: Request, status: int) -> "ErrorPage | None":
        """The error page replacing this answer (for an error found while reading the
        request, the default server's)."""
        location = req.location
        if location is None or req.status:
            return None
        return error_pages.page_for(location, status, req.redirects)

    def _to_error_page(self, req: Request, status: int) -> None:
        location = req.location
        assert location is not None and req.server is not None
        page = error_pages.page_for(location, status, req.redirects)
        assert page is not None
        target = page.target.render(req)
        req.status_override = error_pages.final_status(page, status)
        if not target.startswith(("/", "@")):
            code = error_pages.external_redirect_code(page)
            req.status_override = 0
            body = http1.error_body(code, location.server_tokens)
            location_line = b"Location: " + target.encode("latin-1") + b"\r\n"
            self.send_simple(code, body, b"text/html", extra=location_line)
            return
        if not target.startswith("@") and req.method != b"HEAD":
            req.method = b"GET"  # a named location keeps the method
        req.captures = None
        kept = req.body
        if not req.body_complete or (kept is not None and not kept.held):
            # a body still arriving, or streamed and no longer held whole, cannot go again:
            # what is left of it is read and dropped; one read whole goes with the error page's
            # request, as nginx sends it
            req.body_dropped = True
        # a body that was being streamed held reading back; what is left is now dropped
        self.resume_reading_for("upstream")
        self.resume_reading_for("connecting")
        self._redirect_internally(req, target, keep_args=False)

    def absolute_location(self, req: Request, location: LocationConfig, path: bytes) -> bytes:
        """A redirect upsync writes to "/path", made http://host[:port]/path as nginx's header
        filter does (absolute_redirect, port_in_redirect, server_name_in_redirect)."""
        if not location.absolute_redirect or not path.startswith(b"/"):
            return path
        if location.server_name_in_redirect:
            host = req.server.name if req.server is not None else ""
        else:
            host = req.host or self.local[0]  # no host given: the address it came to, as nginx
        port = self.local[1]
        if location.port_in_redirect and port != 80:
            host = f"{host}:{port}"
        return b"http://" + host.encode("latin-1") + path

    def _answering_location(self, req: Request) -> LocationConfig:
        """The location whose settings shape an answer; before one is chosen, the server's."""
        location = req.location
        if location is None:
            location = self.table.default.block.fallback
        return location

    def finish_response(self, keep_alive: bool, now: float = -1.0) -> None:
        """`now`: the loop time, when the caller has read it in this turn of the loop."""
        req = self.active
        if req is None:
            return
        req.response_done = True
        self.exchange = None
        if req.location is not None and req.location.access_logs:
            self.site.log_access(req)
        if not keep_alive or not req.keep_alive:
            self.close()
            return
        pending = self.upgrade_buffer
        if pending is not None:
            # the upstream declined the upgrade: what the client sent after it is requests again
            self.upgrade_buffer = None
            self._use_parser(self._new_parser())
            self.current = None
            self.in_headers = True
        if req.body_complete:
            self._advance(now)
            if pending and not self.closed:
                self.data_received(pending)
        else:
            # the rest of this request's body is read and dropped before the next request;
            # the upstream it was going to is done with, and so is its back-pressure
            self.body_sink = None
            self.resume_reading_for("upstream")
            self.resume_reading_for("connecting")
            self.timer.set(self.limits.client_body_timeout)

    def _advance(self, now: float = -1.0) -> None:
        self.active = None
        if self.closed:
            return
        queue = self.queue
        if len(queue) > 0:  # len(), not truth: see _hold
            req = queue.pop(0)
            self.active = req
            if len(queue) == 0:
                self.resume_reading_for("pipelined")
            self._dispatch(req)
            return
        # kept alive: the methods called for every request are bound now (see __init__)
        if self.feed is None and self.parser is not None:
            self.feed = self.parser.feed_data
        if self.send is None and self.transport is not None:
            self.send = self.transport.write
        # a connection of a retired configuration (or of a quitting process) that answered
        # keep-alive stays open for the request its client may be sending: that one is
        # answered, with Connection: close
        if len(self.read_pause_reasons) > 0:
            self.resume_reading_for("pipelined")
        self.timer.set(self.keepalive_timeout, now)

    def start_tunnel(self, upstream: "UpstreamConnection", rest: bytes) -> None:
        """101 Switching Protocols: from now on bytes flow untouched both ways."""
        self.uncork()
        req = self.active
        transport = upstream.transport
        if req is None or transport is None or self.closed:
            upstream.close()
            return
        req.response_done = True
        self.exchange = None
        self.site.log_access(req)
        self.timer.cancel()
        self.tunnel = transport
        assert self.transport is not None
        upstream.tunnel = self.transport
        if rest:
            self.transport.write(rest)
        pending, self.upgrade_buffer = self.upgrade_buffer, None
        if pending:
            transport.write(pending)
        self.read_pause_reasons.clear()
        self.transport.resume_reading()


class KnownRequest:
    """A read that held one whole request without a body, and the parser's calls for it: its
    target and its headers (name, value, name, value...) as they came."""

    __slots__ = ("data", "headers", "url")

    def __init__(self, data: bytes, url: bytes, headers: list[bytes]) -> None:
        self.data = data
        self.url = url
        self.headers = headers
