"""HTTP/1.x pieces shared by the client and upstream sides: reasons, error pages, Date."""

import time
from collections.abc import Callable
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

from upsync import SERVER_NAME
from upsync.config.expires import Expires, ExpiresError, parse_expires
from upsync.config.variables import Template, VariableSource

if TYPE_CHECKING:
    from upsync.config.model import LocationConfig

REASONS: Final[dict[int, bytes]] = {s.value: s.phrase.encode() for s in HTTPStatus}
# nginx's wording where it differs from the RFC's (ngx_http_status_lines), in the status line
# and on its error pages
REASONS.update(
    {
        302: b"Moved Temporarily",
        405: b"Not Allowed",
        408: b"Request Time-out",
        414: b"Request-URI Too Large",
        494: b"Request Header Too Large",
        499: b"Client Closed Request",
        503: b"Service Temporarily Unavailable",
        504: b"Gateway Time-out",
    }
)

# Headers that describe one connection, never forwarded (RFC 9110 7.6.1), plus the framing
# headers the proxy sets itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Response headers nginx's proxy module hides by default (proxy_hide_header's defaults).
HIDDEN_RESPONSE = frozenset(
    {
        b"date",
        b"server",
        b"x-pad",
        b"x-accel-expires",
        b"x-accel-redirect",
        b"x-accel-limit-rate",
        b"x-accel-buffering",
        b"x-accel-charset",
    }
)
NON_IDEMPOTENT: Final = frozenset({b"POST", b"LOCK", b"PATCH"})
# Response headers not passed to the client as they came: framing and hop-by-hop headers (the
# proxy writes its own) and the ones nginx hides.
RESPONSE_DROPPED: Final = HOP_BY_HOP | HIDDEN_RESPONSE | {b"content-length"}
# ...of which a 101 Switching Protocols answer keeps this one (its Connection line is the
# proxy's own "upgrade", as nginx's header filter writes it)
UPGRADE_KEPT: Final = frozenset({b"upgrade"})
CONNECTION_UPGRADE: Final = b"Connection: upgrade\r\n"

_SERVER_BYTES: Final = SERVER_NAME.encode()
_SERVER_LINE: Final = b"Server: " + _SERVER_BYTES + b"\r\n"
_PRODUCT: Final = SERVER_NAME.partition("/")[0].encode()  # server_tokens off: no version
_PRODUCT_LINE: Final = b"Server: " + _PRODUCT + b"\r\n"
_wall_clock: Final = time.time


STATUS_200: Final = b"HTTP/1.1 200 OK\r\n"


class _PerSecond:
    """Header lines that change once a second, rebuilt when the second turns."""

    def __init__(self) -> None:
        self.second = 0
        self.date = b""
        self.common = b""
        self.common_unversioned = b""
        self.ok_common = b""  # after a 200's status line
        self.ok_common_unversioned = b""
        # the event loop's (monotonic) time at which this second ends: up to then, a caller
        # that has read the loop's clock needs no wall clock reading
        self.until = 0.0
        self.offset = 0.0  # wall clock minus loop clock, as read at the second's start

    def refresh(self, now: int) -> None:
        self.second = now
        self.date = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        self.common = _SERVER_LINE + self.date
        self.common_unversioned = _PRODUCT_LINE + self.date
        self.ok_common = STATUS_200 + self.common
        self.ok_common_unversioned = STATUS_200 + self.common_unversioned


_per_second: Final = _PerSecond()


def _this_second() -> _PerSecond:
    now = int(_wall_clock())
    if now != _per_second.second:
        _per_second.refresh(now)
    return _per_second


def _second_at(loop_now: float) -> _PerSecond:
    """This second's lines, for a caller that has read the event loop's clock: the wall clock
    is read once a second, not once a response (as nginx caches its time)."""
    second = _per_second
    if loop_now >= second.until or loop_now < second.until - 1.0:
        wall = _wall_clock()
        now = int(wall)
        if now != second.second:
            second.refresh(now)
        second.until = loop_now + (now + 1 - wall)
        second.offset = wall - loop_now
    return second


def wall_time_at(loop_now: float) -> float:
    """The wall clock's time at the event loop's time loop_now, without reading it more than
    once a second (a step of the wall clock shows within the second)."""
    return loop_now + _second_at(loop_now).offset


def common_headers_at(server_tokens: bool, loop_now: float) -> bytes:
    """common_headers(), at the event loop's time."""
    second = _second_at(loop_now)
    return second.common if server_tokens else second.common_unversioned


def ok_head_start_at(server_tokens: bool, loop_now: float) -> bytes:
    """A 200's status line, then common_headers(), at the event loop's time."""
    second = _second_at(loop_now)
    return second.ok_common if server_tokens else second.ok_common_unversioned


def date_header() -> bytes:
    """`Date: ...\\r\\n`, formatted once per second."""
    return _this_second().date


def server_header(server_tokens: bool = True) -> bytes:
    return _SERVER_LINE if server_tokens else _PRODUCT_LINE


def common_headers(server_tokens: bool = True) -> bytes:
    """`Server` and `Date`, built once per second."""
    second = _this_second()
    return second.common if server_tokens else second.common_unversioned


class HeaderClasses:
    """Sorts header names into classes by their lower-cased form, remembering each spelling it
    has seen (up to a bound): the same few spellings come in every message, and this spares
    lower-casing each of them every time."""

    def __init__(
        self,
        by_lower_name: dict[bytes, int],
        default: int,
        classify: Callable[[bytes], int] | None = None,
    ) -> None:
        self._by_lower_name = by_lower_name
        self._default = default
        self._classify = classify  # for names not listed: their class by their form
        self._by_spelling: dict[bytes, int] = {}

    def of(self, name: bytes) -> int:
        found = self._by_spelling.get(name)
        if found is None:
            lower = name.lower()
            listed = self._by_lower_name.get(lower)
            if listed is not None:
                found = listed
            elif self._classify is not None:
                found = self._classify(lower)
            else:
                found = self._default
            if len(self._by_spelling) < 1024:
                self._by_spelling[name] = found
        return found


_REMEMBERED_NAMES: Final = 32


def header_line(name: bytes, value: bytes) -> bytes:
    """`name: value` and CRLF. Compiled, %-formatting of bytes with %s is one copy of the
    parts into the result, without the tuple and buffer handling of a join."""
    return b"%s: %s\r\n" % (name, value)


# no header value holds a line end: the value of a position whose line is not remembered
_NO_VALUE: Final = b"\r\n"


class HeaderMemory:
    """A connection's previous message's header names and their classes, by position: a peer
    sends the same names in the same order, and comparing a name with the one at its place
    last time costs less than looking it up (a lookup hashes each new bytes name). The lines
    made of them are remembered too: most values repeat as well (a Content-Type)."""

    __slots__ = ("classes", "kinds", "lines", "names", "values")

    def __init__(self, classes: HeaderClasses) -> None:
        self.classes = classes
        self.names: list[bytes] = []
        self.kinds: list[int] = []
        self.values: list[bytes] = []
        self.lines: list[bytes] = []

    def kind(self, index: int, name: bytes) -> int:
        """The class of the header at this position of the message."""
        names = self.names
        if index < len(names) and names[index] == name:
            return self.kinds[index]
        kind = self.classes.of(name)
        if index < len(names):
            names[index] = name
            self.kinds[index] = kind
            self.values[index] = _NO_VALUE
        elif index < _REMEMBERED_NAMES:
            names.append(name)
            self.kinds.append(kind)
            self.values.append(_NO_VALUE)
            self.lines.append(b"")
        return kind

    def line_of_known(self, index: int, name: bytes, value: bytes) -> bytes:
        """line(), for a header whose name the caller has just found at this position (or
        made kind() remember there): only the value is compared."""
        values = self.values
        if index >= len(values):
            return header_line(name, value)
        if values[index] == value:
            return self.lines[index]
        line = header_line(name, value)
        values[index] = value
        self.lines[index] = line
        return line

    def line(self, index: int, name: bytes, value: bytes) -> bytes:
        """header_line(name, value) for the header at this position: the same bytes as last
        time when the name and value are the same. Remembered when kind() last saw this name
        at this position."""
        names = self.names
        if index < len(names) and names[index] == name:
            return self.line_of_known(index, name, value)
        return header_line(name, value)


_STATUS_LINES: Final[dict[int, bytes]] = {}


def status_line(code: int) -> bytes:
    line = _STATUS_LINES.get(code)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (code, REASONS.get(code, b"Unknown"))
        if 100 <= code < 1000:
            _STATUS_LINES[code] = line
    return line


# the codes nginx has an error page for (ngx_http_error_pages); any other error it answers
# with an empty body
PAGED_CODES: Final = frozenset(
    {301, 302, 303, 307, 308, *range(400, 417), 421, 429, 494, 495, 496, 497, 498}
    | {500, 501, 502, 503, 504, 505, 507}
) - {407}


def error_body(code: int, server_tokens: bool = True) -> bytes:
    """nginx's built-in error page, signed upsync (with its version unless server_tokens off)."""
    title = b"%d %s" % (code, REASONS.get(code, b"Unknown"))
    return (
        b"<html>\r\n<head><title>"
        + title
        + b"</title></head>\r\n<body>\r\n<center><h1>"
        + title
        + b"</h1></center>\r\n<hr><center>"
        + (_SERVER_BYTES if server_tokens else _PRODUCT)
        + b"</center>\r\n</body>\r\n</html>\r\n"
    )


def simple_response(
    code: int,
    body: bytes,
    content_type: bytes,
    keep_alive: bool,
    head_only: bool = False,
    extra: bytes = b"",
    server_tokens: bool = True,
    trailers: bytes | None = None,
    keepalive_header: int = 0,
) -> bytes:
    """A whole response; with `trailers` (add_trailer's lines) its body goes chunked. A 204
    has neither type, length nor body, as nginx sends it."""
    if code == 204:
        return status_line(code) + common_headers(server_tokens) + extra + (
            head_end(keep_alive, keepalive_header)
        )
    framing = b"Content-Length: %d\r\n" % len(body)
    if trailers is not None and not head_only:
        framing = b"Transfer-Encoding: chunked\r\n"
        body = chunked_whole(body, trailers)
    head = (
        status_line(code)
        + common_headers(server_tokens)
        + b"Content-Type: "
        + content_type
        + b"\r\n"
        + framing
        + extra
        + head_end(keep_alive, keepalive_header)
    )
    return head if head_only else head + body


KEEP_ALIVE_END: Final = b"Connection: keep-alive\r\n\r\n"
CLOSE_END: Final = b"Connection: close\r\n\r\n"
# the same after a Content-Length value: one join part fewer
LENGTH_KEEP_ALIVE_END: Final = b"\r\n" + KEEP_ALIVE_END
LENGTH_CLOSE_END: Final = b"\r\n" + CLOSE_END


def head_end(keep_alive: bool, keepalive_header: int = 0) -> bytes:
    """The Connection line that ends a response head; with keepalive_timeout's second value,
    a Keep-Alive line too."""
    if not keep_alive:
        return CLOSE_END
    if keepalive_header:
        return b"Connection: keep-alive\r\nKeep-Alive: timeout=%d\r\n\r\n" % keepalive_header
    return KEEP_ALIVE_END


def chunked_whole(body: bytes, trailers: bytes) -> bytes:
    """A body as one chunk, then the last chunk with the trailer lines."""
    return (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + last_chunk(trailers)


def last_chunk(trailers: bytes) -> bytes:
    return b"0\r\n" + trailers + b"\r\n"


def error_response(
    code: int, keep_alive: bool, head_only: bool = False, server_tokens: bool = True
) -> bytes:
    body = error_body(code, server_tokens)
    return simple_response(code, body, b"text/html", keep_alive, head_only, b"", server_tokens)


def status_has_body(code: int) -> bool:
    return not (100 <= code < 200 or code in (204, 304))


# add_header applies to these unless it says `always` (nginx's headers filter)
_ADD_HEADER_STATUSES: Final = frozenset({200, 201, 204, 206, 301, 302, 303, 304, 307, 308})


EXPIRES_STATUSES: Final = _ADD_HEADER_STATUSES  # the same in nginx's headers filter
_EPOCH: Final = b"Expires: Thu, 01 Jan 1970 00:00:01 GMT\r\nCache-Control: no-cache\r\n"
_MAX: Final = b"Expires: Thu, 31 Dec 2037 23:55:55 GMT\r\nCache-Control: max-age=315360000\r\n"


def expires_headers(
    spec: Expires, now: float, last_modified: float, source: VariableSource
) -> bytes | None:
    """The Expires and Cache-Control lines of `expires` (nginx's headers filter); None when a
    value with variables is off or does not parse, which leaves the response's own alone.
    `last_modified`: the response's Last-Modified time, or -1 when it has none."""
    kind, seconds = spec.kind, spec.seconds
    if spec.value is not None:
        try:
            parsed = parse_expires(spec.value.render(source), kind == "modified")
        except ExpiresError:
            return None
        kind, seconds = parsed.kind, parsed.seconds
    if kind == "off":
        return None
    if kind == "epoch":
        return _EPOCH
    if kind == "max":
        return _MAX
    if seconds == 0 and kind != "daily":
        stamp = formatdate(now, usegmt=True).encode()
        return b"Expires: " + stamp + b"\r\nCache-Control: max-age=0\r\n"
    whole_now = int(now)
    if kind == "daily":
        expires_at = next_time_of_day(seconds, whole_now)
    elif kind == "access" or last_modified < 0:
        expires_at = whole_now + seconds
    else:
        expires_at = int(last_modified) + seconds
    max_age = expires_at - whole_now
    stamp = formatdate(expires_at, usegmt=True).encode()
    control = b"no-cache" if spec.seconds < 0 or max_age < 0 else b"max-age=%d" % max_age
    return b"Expires: " + stamp + b"\r\nCache-Control: " + control + b"\r\n"


def next_time_of_day(seconds: int, now: int) -> int:
    """The next moment (local time, as nginx's ngx_next_time) at this time of day."""
    day = time.localtime(now)
    hour, rest = divmod(seconds, 3600)
    for days in (0, 1):
        moment = time.mktime(
            (day.tm_year, day.tm_mon, day.tm_mday + days, hour, rest // 60, rest % 60, 0, 0, -1)
        )
        if moment > now:
            break
    return int(moment)


def last_modified_of(lines: list[bytes]) -> float:
    """A response's Last-Modified time (seconds since the epoch), or -1 without one."""
    for line in lines:
        if line[:14].lower() == b"last-modified:":
            try:
                return parsedate_to_datetime(line[14:].strip().decode("latin-1")).timestamp()
            except (TypeError, ValueError):
                return -1.0
    return -1.0


def split_content_type(lines: list[bytes], default: bytes) -> tuple[bytes, bytes]:
    """The Content-Type among header lines (else `default`), and the other lines joined."""
    content_type = default
    others = []
    for line in lines:
        if line[:13].lower() == b"content-type:":
            content_type = line[13:].strip()
        else:
            others.append(line)
    return content_type, b"".join(others)


def drop_headers(lines: list[bytes], names: tuple[bytes, ...]) -> list[bytes]:
    """The response's header lines without those named (lower case, with the colon)."""
    return [line for line in lines if line[: line.find(b":") + 1].lower() not in names]


# add_header of these replaces the response's own (an empty value removes it), as nginx's
# ngx_http_set_response_header and ngx_http_set_last_modified do
_REPLACING: Final = {"etag": b"etag:", "last-modified": b"last-modified:"}
_EXPIRES_REPLACES: Final = (b"expires:", b"cache-control:")


def added_headers(
    added: tuple[tuple[str, Template, bool], ...],
    status: int,
    source: VariableSource,
    made: list[bytes],
) -> tuple[bytes, tuple[bytes, ...]]:
    """The add_header lines for a response of `status` (one whose value is empty is left
    out), and the response's own headers they replace (lower case, with the colon). Each line
    is added to `made` (the response's header lines so far, what $sent_http_NAME reads) as it
    is made, so a later value sees the earlier ones, as in nginx."""
    start = len(made)
    replaced: dict[bytes, bytes] = {}
    plain_status = status in _ADD_HEADER_STATUSES
    for name, template, always in added:
        if plain_status or always:
            value = template.render(source)
            own = _REPLACING.get(name.lower())
            line = f"{name}: {value}\r\n".encode("latin-1", "replace") if value else b""
            if own is not None:
                replaced[own] = line
            elif line:
                made.append(line)
    return b"".join(made[start:]) + b"".join(replaced.values()), tuple(replaced)


def trailers_apply(
    trailers: tuple[tuple[str, Template, bool], ...], status: int
) -> bool:
    """Whether add_trailer adds any to a response of `status` (nginx then sends it chunked)."""
    plain_status = status in _ADD_HEADER_STATUSES
    return any(plain_status or always for _, _, always in trailers)


def trailer_lines(
    trailers: tuple[tuple[str, Template, bool], ...],
    status: int,
    source: VariableSource,
    made: list[bytes],
) -> bytes:
    """add_trailer's lines for a response of `status`, each made in order into `made` (what
    $sent_trailer_NAME reads, so a later trailer sees the earlier ones)."""
    plain_status = status in _ADD_HEADER_STATUSES
    for name, template, always in trailers:
        if plain_status or always:
            value = template.render(source)
            if value:
                made.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
    return b"".join(made)


def header_filter(
    location: "LocationConfig",
    status: int,
    source: VariableSource,
    last_modified: float = -1.0,
    made: list[bytes] | None = None,
) -> tuple[bytes, tuple[bytes, ...]]:
    """nginx's headers filter for a response of `status`: `expires`, then `add_header`; the
    lines to add, and which of the response's own headers they replace (lower case, with the
    colon). `made`: the response's header lines so far, which grows by add_header's. Called
    only where the location has either."""
    lines = b""
    replaced: tuple[bytes, ...] = ()
    if location.expires is not None and status in EXPIRES_STATUSES:
        cache = expires_headers(location.expires, time.time(), last_modified, source)
        if cache is not None:
            lines, replaced = cache, _EXPIRES_REPLACES
    if location.add_headers:
        added, own = added_headers(
            location.add_headers, status, source, [] if made is None else made
        )
        lines += added
        replaced += own
    return lines, replaced
