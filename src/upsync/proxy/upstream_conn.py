"""One connection to an upstream peer; it parses responses and hands events to its exchange."""

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

import httptools

from upsync.proxy.cookies import rewrite_cookie
from upsync.proxy.http1 import (
    HOP_BY_HOP,
    RESPONSE_DROPPED,
    UPGRADE_KEPT,
    HeaderClasses,
    HeaderMemory,
    header_line,
)
from upsync.proxy.redirects import rewrite_redirect
from upsync.proxy.timer import Deadline
from upsync.upstream.peer import Peer
from upsync.upstream.pool import KeepalivePool, PooledConnection

if TYPE_CHECKING:
    from upsync.proxy.exchange import ProxyExchange


# what to do with a response header
_PASS: Final = 0
_LENGTH: Final = 1
_ENCODING: Final = 2
_UPGRADE: Final = 3
_DROP: Final = 4
_LOCATION: Final = 5  # proxy_redirect applies
_REFRESH: Final = 6  # proxy_redirect applies after "url="
_COOKIE: Final = 7  # proxy_cookie_domain, proxy_cookie_path, proxy_cookie_flags apply
_ACCEL: Final = 8  # X-Accel-Redirect, X-Accel-Limit-Rate: acted on, not passed
ACCEL_HEADERS: Final = frozenset({b"x-accel-redirect", b"x-accel-limit-rate"})
# passed on once: a repeated one is dropped, the first kept (nginx 1.23 on); one class each
_ONCE: Final = 9
ONCE_HEADERS: Final = (b"content-type", b"last-modified", b"etag", b"expires")


def response_header_classes(
    hidden: frozenset[bytes], passed: frozenset[bytes], cookies: bool = False
) -> HeaderClasses:
    """What to do with each response header, for a location's proxy_hide_header and
    proxy_pass_header (nginx's hidden defaults, less the passed ones, plus the hidden ones),
    and whether its Set-Cookie headers are rewritten."""
    dropped = (RESPONSE_DROPPED - passed) | hidden | HOP_BY_HOP | {b"content-length"}
    classes = {
        **dict.fromkeys(dropped, _DROP),
        **dict.fromkeys(UPGRADE_KEPT, _UPGRADE),
        b"content-length": _LENGTH,
        b"transfer-encoding": _ENCODING,
        b"location": _LOCATION,
        b"refresh": _REFRESH,
    }
    if cookies and b"set-cookie" not in dropped:
        classes[b"set-cookie"] = _COOKIE
    for name in ACCEL_HEADERS - passed:
        classes[name] = _ACCEL
    for offset, name in enumerate(ONCE_HEADERS):
        if name not in dropped:
            classes[name] = _ONCE + offset
    return HeaderClasses(classes, _PASS)


def response_parser(protocol: object) -> httptools.HttpResponseParser:
    """A parser for an upstream's responses, calling back `protocol`. nginx takes a response
    whose lines end in a bare LF (old servers send them); the head is re-serialised towards the
    client with CRLF."""
    parser = httptools.HttpResponseParser(protocol)
    parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
    return parser


class UnknownTransferEncoding(Exception):
    """An upstream Transfer-Encoding other than one "chunked" (nginx 1.23 on: 502)."""


RESPONSE_HEADERS: Final = response_header_classes(frozenset(), frozenset())


class HeadTooBig(Exception):
    """The response head outgrew proxy_buffer_size (nginx: "upstream sent too big header")."""


class UpstreamConnection(PooledConnection):
    """Parser callbacks only record and forward; completion is reported after feed_data returns,
    so the exchange may hand this connection to the next request without re-entering the parser."""

    __slots__ = (
        "accel",
        "chunked",
        "closed",
        "done",
        "exchange",
        "feed",
        "head_size",
        "header_index",
        "interim",
        "keep_alive",
        "keeps_alive",
        "known",
        "learnable",
        "learning",
        "length",
        "lines",
        "max_head",
        "memory",
        "parser",
        "pool",
        "received_any",
        "repeating",
        "seen",
        "send",
        "skip_body",
        "status_code",
        "timer",
        "trailing",
        "transport",
        "tunnel",
        "upgrade_lines",
        "write_paused",
    )

    def __init__(self, peer: Peer, pool: KeepalivePool) -> None:
        super().__init__(peer)
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.send: Callable[[bytes], None] | None = None  # the transport's write, bound once
        self.exchange: ProxyExchange | None = None
        self.parser: httptools.HttpResponseParser | None = None
        # the parser's methods, bound once per parser: a call by name looks the method up each
        # time (about a hundred instructions, several times a response)
        self.feed: Callable[[bytes], None] | None = None
        self.status_code: Callable[[], int] | None = None
        self.keeps_alive: Callable[[], bool] | None = None
        # a response head read before, and whether the current response repeats it (see
        # KnownHead); the first read of a response, while it is parsed, when its head may be
        # learnt; and whether this one's headers allow it (none is rewritten per request)
        self.known: KnownHead | None = None
        self.repeating = False
        self.learning: bytes | None = None
        self.learnable = True
        # the request's location's header classes, with the previous response's names
        self.memory = HeaderMemory(RESPONSE_HEADERS)
        # the response head as it is parsed: lines to pass on, and what the proxy itself needs
        self.lines: list[bytes] = []
        self.upgrade_lines: list[bytes] | None = None  # made when a response has one
        self.accel: list[bytes] | None = None  # X-Accel-* lines, for nginx's special meaning
        self.seen = 0  # of the headers taken once, by class bit
        self.header_index = 0  # of the header being read
        self.length: bytes | None = None
        self.chunked = False
        self.received_any = False
        self.done = False
        self.keep_alive = False
        self.skip_body = False
        self.interim = False
        # bytes came after the response was complete: the connection is never reused
        self.trailing = False
        self.head_size = 0
        self.max_head = 4096  # proxy_buffer_size of the request's location
        self.tunnel: asyncio.Transport | None = None
        self.closed = False
        self.write_paused = False
        self.timer = Deadline(asyncio.get_running_loop(), self._on_timeout)

    def _on_timeout(self) -> None:
        if self.exchange is not None:
            self.exchange.on_upstream_timeout()

    # lifecycle
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(
            asyncio.Transport, transport
        )  # uvloop's transports are not subclasses
        self.send = self.transport.write

    def attach(self, exchange: "ProxyExchange") -> None:
        self.exchange = exchange
        classes = exchange.plan.response_headers
        if classes is not self.memory.classes:
            self.memory = HeaderMemory(classes)  # another location's: names learnt again
        if self.parser is None:
            self.parser = parser = response_parser(self)
            self.feed = parser.feed_data
            self.status_code = parser.get_status_code
            self.keeps_alive = parser.should_keep_alive
        self._reset_head()
        self.received_any = False
        self.repeating = False
        self.done = False
        self.keep_alive = False
        self.skip_body = False
        self.interim = False
        self.trailing = False
        self.head_size = 0
        self.max_head = exchange.settings.buffer_size
        self.requests += 1

    def detach(self) -> None:
        self.exchange = None
        self.timer.clear()
        if not (self.done and not self.skip_body) or self.trailing:
            # the parser may still wait for a body that never comes (HEAD, 204, a cut-off
            # response): the next request on this connection gets a fresh one
            self._drop_parser()

    def close(self) -> None:
        self.timer.cancel()
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.timer.cancel()
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()
        self.closed = True
        self.send = None
        self.pool.discard(self)
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.on_upstream_closed(self)
        if self.tunnel is not None:
            self.tunnel.close()
        # parser, timer and known head point back at this object: let reference counting
        # free it
        self.timer.release()
        self._drop_parser()
        self.known = None

    def _drop_parser(self) -> None:
        self.parser = self.feed = self.status_code = self.keeps_alive = None
        if self.known is not None:
            self.known.drop_parser()  # the head it learnt stays

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.exchange is not None:
            self.exchange.client.pause_reading_for("upstream")
        elif self.tunnel is not None:
            self.tunnel.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.exchange is not None:
            self.exchange.client.resume_reading_for("upstream")
            self.exchange.on_upstream_writable()
        elif self.tunnel is not None:
            self.tunnel.resume_reading()

    # data
    def clean(self) -> bool:
        """True when exactly one whole response was read and nothing after it: the only state
        in which the connection may serve another request."""
        return self.done and self.keep_alive and not self.trailing

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        exchange = self.exchange
        parser = self.parser
        if exchange is None or parser is None or self.done:
            # bytes nobody asked for: the connection can no longer be trusted
            self.abort()
            return
        first = not self.received_any
        self.received_any = True
        exchange.req.try_received += len(data)
        client = exchange.client
        client.cork()  # the response head, body and end leave in one send()
        try:
            try:
                feed = self.feed
                if first:
                    feed = self._first_read_feed(data)
                elif self.repeating:
                    known = self.known
                    assert known is not None
                    feed = known.feed
                assert feed is not None  # bound with the parser
                feed(data)
            except httptools.HttpParserUpgrade as upgrade:
                if self.done and self.exchange is exchange:
                    self.exchange = None
                    exchange.on_upstream_upgrade(self, data[upgrade.args[0] :])
                return
            except httptools.HttpParserError as error:
                if not self.done:
                    self.exchange = None
                    exchange.on_upstream_invalid(self, isinstance(error.__context__, HeadTooBig))
                    return
                self.trailing = True  # garbage after a complete response
            if self.exchange is exchange and self.tunnel is None:
                if self.done:
                    self.exchange = None
                    exchange.on_response_complete(self, self.clean())
                else:
                    exchange.on_upstream_read()
        finally:
            self.learning = None
            client.uncork()

    def _first_read_feed(self, data: bytes) -> Callable[[bytes], None] | None:
        """The parser for a response that starts with `data`: the known head's when `data`
        starts with that head, else the connection's own (which may learn the head)."""
        known = self.known
        if known is not None and known.matches(data):
            known.pace.matched = True
            self.repeating = True
            return known.parser_feed()
        if known is None or known.pace.worth_learning():
            self.learning = data
        return self.feed

    # httptools callbacks
    def _reset_head(self) -> None:
        self.learnable = True
        self.lines = []
        self.upgrade_lines = None
        self.accel = None
        self.seen = 0
        self.header_index = 0
        self.length = None
        self.chunked = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.done:
            self.trailing = True  # a second response after the first: never relayed
            return
        size = self.head_size + len(name) + len(value) + 4
        self.head_size = size
        if size > self.max_head:
            raise HeadTooBig()
        index = self.header_index
        self.header_index = index + 1
        memory = self.memory
        names = memory.names
        if index < len(names) and names[index] == name:
            kind = memory.kinds[index]  # kind()'s first case, without the call
        else:
            kind = memory.kind(index, name)
        if kind == _PASS:
            self.lines.append(memory.line_of_known(index, name, value))
            return
        if kind >= _ONCE or kind in (_LOCATION, _REFRESH, _ENCODING):
            once = 1 << kind
            if self.seen & once:
                if kind == _ENCODING:
                    raise UnknownTransferEncoding()
                return  # a repeated one: the first stands (nginx logs and drops it)
            self.seen |= once
            if kind >= _ONCE:
                self.lines.append(memory.line_of_known(index, name, value))
                return
        if kind == _LENGTH:
            self.length = value
        elif kind == _ENCODING:
            if value.strip().lower() != b"chunked":
                raise UnknownTransferEncoding()
            self.chunked = True
        elif kind == _UPGRADE:
            # kept for a 101 only
            self.learnable = False
            if self.upgrade_lines is None:
                self.upgrade_lines = []
            self.upgrade_lines.append(header_line(name, value))
        elif kind == _ACCEL:
            self.learnable = False  # acted on per request
            if self.accel is None:
                self.accel = []
            self.accel.append(header_line(name, value))
        elif kind == _COOKIE:
            self.learnable = False  # rewritten per request
            exchange = self.exchange
            assert exchange is not None
            settings = exchange.settings
            value = rewrite_cookie(value, settings, exchange.req)
            self.lines.append(header_line(name, value))
        elif kind in (_LOCATION, _REFRESH):
            self.learnable = False  # rewritten per request
            exchange = self.exchange
            assert exchange is not None
            redirects = exchange.plan.redirects
            if redirects:
                rewritten = rewrite_redirect(value, redirects, kind == _REFRESH, exchange.req)
                if rewritten is not value and kind == _LOCATION:
                    # a Location upsync rewrote is its own redirect, made absolute as nginx does
                    location = exchange.plan.location
                    rewritten = exchange.client.absolute_location(exchange.req, location, rewritten)
                value = rewritten
            self.lines.append(header_line(name, value))

    def on_message_begin(self) -> None:
        if self.done:
            self.trailing = True

    def on_headers_complete(self) -> None:
        if self.done:
            self.trailing = True
            return
        # taken now: the exchange may let the parser go (a retry detaches this connection)
        status_code, keeps_alive = self.status_code, self.keeps_alive
        assert status_code is not None and keeps_alive is not None
        status = status_code()
        if 100 <= status < 200 and status != 101:
            self.interim = True  # "100 Continue" and friends are not forwarded
            self._reset_head()
            self.learning = None  # the final response's head does not start the read
            return
        learning = self.learning
        if learning is not None and self.learnable and status != 101:
            self._learn(learning)
        self._head_complete(status, keeps_alive)

    def on_known_head(self, status: int, keeps_alive: Callable[[], bool]) -> None:
        """The known head's parser read it again: its headers are what they made last time."""
        if self.done:
            self.trailing = True
            return
        known = self.known
        assert known is not None
        self.lines = known.lines
        self.length = known.length
        self.chunked = known.chunked
        self._head_complete(status, keeps_alive)

    def _head_complete(self, status: int, keeps_alive: Callable[[], bool]) -> None:
        exchange = self.exchange
        assert exchange is not None
        self.skip_body = exchange.on_response_head(self, status)
        if self.skip_body or status == 101:
            self.keep_alive = keeps_alive() and status != 101
            self.done = True

    def _learn(self, data: bytes) -> None:
        """Keep the head that starts `data` with what its headers made. Its end is the first
        empty line: in a head the parser took, a CRLF CRLF can only end it. A head whose lines
        end in bare LFs is not found (or is found with some of its body, which only makes a
        later match rarer)."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return
        known = self.known
        if known is None:
            known = self.known = KnownHead(self)
        known.learn(data[: end + 4])

    def on_body(self, body: bytes) -> None:
        if self.done:
            # a body after HEAD, 204 or 304, or after a response that was dropped for a retry
            self.trailing = True
        elif self.exchange is not None:
            self.exchange.on_response_body(body)

    def on_message_complete(self) -> None:
        self.message_complete(self.keeps_alive)

    def message_complete(self, keeps_alive: Callable[[], bool] | None) -> None:
        if self.interim:
            self.interim = False
            return
        if not self.done:
            self.keep_alive = keeps_alive is not None and keeps_alive()
            self.done = True


class LearningPace:
    """When a connection learns a response head after one that did not repeat the known head.
    A head that came back is replaced at once (by one with the next second's Date, most
    often). While learnt heads never come back (a backend that sends a new id or cookie each
    time), one response in `interval` is learnt, the interval doubling up to 64: finding and
    keeping a head costs about a thousand instructions, which such a backend would otherwise
    cost each response for nothing."""

    __slots__ = ("countdown", "interval", "matched")

    def __init__(self) -> None:
        self.matched = False  # the known head came back since it was learnt
        self.interval = 1
        self.countdown = 0

    def worth_learning(self) -> bool:
        if self.matched:
            self.matched = False
            self.interval = 1
            self.countdown = 0
            return True
        if self.countdown > 0:
            self.countdown -= 1
            return False
        self.interval = min(self.interval * 2, 64)
        self.countdown = self.interval
        return True


class KnownHead:
    """The last response head an upstream connection learnt, with what its headers made, and a
    second parser for responses that start with the same bytes: a backend that answers the
    same way again (most do, but for Date once a second) is parsed without a call per header.
    A head with headers rewritten or acted on per request (Set-Cookie under proxy_cookie_*,
    Location, Refresh, X-Accel-*, Upgrade) is never learnt, nor an interim or 101 one.
    The same bytes make the same headers for the same header classes (the location's), and
    the size check passed for a proxy_buffer_size at least as large."""

    __slots__ = (
        "chunked",
        "classes",
        "conn",
        "feed",
        "head",
        "head_size",
        "keeps_alive",
        "length",
        "lines",
        "pace",
        "parser",
        "status_code",
    )

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self.head = b""
        self.classes: HeaderClasses | None = None
        self.lines: list[bytes] = []
        self.length: bytes | None = None
        self.chunked = False
        self.head_size = 0
        self.parser: httptools.HttpResponseParser | None = None
        self.feed: Callable[[bytes], None] | None = None
        self.status_code: Callable[[], int] | None = None
        self.keeps_alive: Callable[[], bool] | None = None
        self.pace = LearningPace()

    def learn(self, head: bytes) -> None:
        """Keep `head` with what the connection's headers made of it, just now."""
        conn = self.conn
        self.head = head
        self.classes = conn.memory.classes
        # a copy: a chunked body's trailer fields are added to the connection's lines after
        # its head (and never to these, which the second parser's responses share)
        self.lines = list(conn.lines)
        self.length = conn.length
        self.chunked = conn.chunked
        self.head_size = conn.head_size

    def matches(self, data: bytes) -> bool:
        """Whether a response that starts with `data` repeats this head, for the location its
        connection now serves."""
        conn = self.conn
        head = self.head
        size = len(head)
        return (
            conn.memory.classes is self.classes
            and self.head_size <= conn.max_head
            and len(data) >= size
            and data[:size] == head
        )

    def parser_feed(self) -> Callable[[bytes], None]:
        feed = self.feed
        if feed is None:
            self.parser = parser = response_parser(self)
            self.feed = feed = parser.feed_data
            self.status_code = parser.get_status_code
            self.keeps_alive = parser.should_keep_alive
        return feed

    def drop_parser(self) -> None:
        self.parser = self.feed = self.status_code = self.keeps_alive = None

    # the second parser's callbacks: none per header
    def on_message_begin(self) -> None:
        self.conn.on_message_begin()

    def on_headers_complete(self) -> None:
        status_code, keeps_alive = self.status_code, self.keeps_alive
        assert status_code is not None and keeps_alive is not None
        self.conn.on_known_head(status_code(), keeps_alive)

    def on_body(self, body: bytes) -> None:
        self.conn.on_body(body)

    def on_message_complete(self) -> None:
        self.conn.message_complete(self.keeps_alive)
