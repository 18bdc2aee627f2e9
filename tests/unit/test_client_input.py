import httptools
import pytest

from upsync.proxy.intake import (
    CONNECTION_CLOSE,
    CONNECTION_KEEP_ALIVE,
    LINE_BARE_LF,
    LINE_HTTP09,
    LINE_HTTP10,
    LINE_HTTP11,
    LINE_UNKNOWN,
    NAME_INVALID,
    NAME_UNDERSCORED,
    NAME_VALID,
    bare_crs,
    connection_tokens,
    header_name_class,
    line_after_target,
    line_method,
    parseable_request_line,
)


@pytest.mark.parametrize(
    ("data", "offsets"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", []),
        (b"GET / HTTP/1.0\nHost: x\n\n", []),  # bare LF: accepted, as nginx does
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbinary\rbody", [33]),  # in a body: the caller decides
        (b"GET / HTTP/1.1\r", []),  # its LF may open the next read
        (b"GET / HTTP/1.1\r\nX: 1\rTransfer-Encoding: chunked\r\n\r\n", [20]),
        (b"GET / HTTP/1.1\rHost: x\r\n\r\n", [14]),
        (b"\r\r\r", [0, 1]),
    ],
)
def test_bare_crs(data: bytes, offsets: list[int]) -> None:
    assert bare_crs(data) == offsets


@pytest.mark.parametrize(
    ("data", "target", "line"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1, LINE_HTTP11),
        (b"GET /a?b HTTP/1.0\r\n\r\n", 4, LINE_HTTP10),
        (b"GET / HTTP/1.0\nHost: x\n\n", 1, LINE_HTTP10 | LINE_BARE_LF),
        (b"GET / HTTP/1.1\n\n", 1, LINE_HTTP11 | LINE_BARE_LF),
        (b"GET / HTTP/2.0\n\n", 1, LINE_UNKNOWN | LINE_BARE_LF),
        (b"GET / HTTP/1.1", 1, LINE_UNKNOWN),  # the line is not whole yet: the parser is asked
        (b"GET /long", 5, LINE_UNKNOWN),  # the target goes on in the next read
        (b"GET / HTTP/2.0\r\n\r\n", 1, LINE_UNKNOWN),
        (b"GET / HTTP/1.1x\r\n\r\n", 1, LINE_UNKNOWN),
        (b"GET / HTTP/1.2\r\n\r\n", 1, LINE_UNKNOWN),  # the parser tells what it is
        (b"GET / HTTP/0.1\r\n\r\n", 1, LINE_UNKNOWN),
        (b"GET / HTTX/1.1\r\n\r\n", 1, LINE_UNKNOWN),
        (b"GET / http/1.1\r\n\r\n", 1, LINE_UNKNOWN),
        (b"GET / HTTP/1,0\r\n\r\n", 1, LINE_UNKNOWN),
        (b"GET / HTTP-1.0\r\n\r\n", 1, LINE_UNKNOWN),
        (b"GET / RTSP/1.0\r\n\r\n", 1, LINE_UNKNOWN),
        (b"\r\nGET / HTTP/1.1\r\n\r\n", 1, LINE_UNKNOWN),  # leading empty line
        (b"M-SEARCH * HTTP/1.1\r\n\r\n", 1, LINE_HTTP11),
        (b"GET /x\r\n", 2, LINE_HTTP09),
        (b"GET /x\n", 2, LINE_HTTP09),
    ],
)
def test_line_after_target(data: bytes, target: int, line: int) -> None:
    assert line_after_target(data, target) == line


@pytest.mark.parametrize(
    ("data", "method"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"GET"),
        (b"GETX / HTTP/1.1\r\n\r\n", b"GETX"),
        (b"POST /a HTTP/1.0\n\n", b"POST"),
        (b"M-SEARCH * HTTP/1.1\r\n\r\n", b"M-SEARCH"),
    ],
)
def test_line_method(data: bytes, method: bytes) -> None:
    assert line_method(data) == method


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        (b"x-real-ip", NAME_VALID),
        (b"x_real_ip", NAME_UNDERSCORED),
        (b"x.dot", NAME_INVALID),
        (b"x-a_b.c", NAME_INVALID),
    ],
)
def test_header_name_class(name: bytes, kind: int) -> None:
    assert header_name_class(name) == kind


def test_parseable_request_line_keeps_what_was_sent() -> None:
    fixed = parseable_request_line(b"FOOBAR /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert fixed == (b"GET /caf%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n", b"FOOBAR", b"/caf\xc3\xa9")
    assert parseable_request_line(b"foo / HTTP/1.1\r\n\r\n") is None  # lower case: not a method
    assert parseable_request_line(b"GET /a\x01b HTTP/1.1\r\n\r\n") is None
    assert parseable_request_line(b"GET / HTTP/1.1") is None


def test_keepalive_disable_knows_browsers_as_nginx_does() -> None:
    from upsync.proxy.intake import browser_keepalive_disabled

    msie6, safari, both = (True, False), (False, True), (True, True)
    old = b"Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)"
    assert browser_keepalive_disabled(*msie6, b"POST", old)
    assert not browser_keepalive_disabled(*msie6, b"GET", old)  # only after a POST
    assert not browser_keepalive_disabled(*msie6, b"POST", old.replace(b"5.1", b"5.1; SV1"))
    assert not browser_keepalive_disabled(*msie6, b"POST", b"Mozilla/4.0 (MSIE 7.0; Windows)")
    assert not browser_keepalive_disabled(*msie6, b"POST", b"Opera/9 (MSIE 5.0; Windows)")
    mac = b"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) Safari/605.1.15"
    assert browser_keepalive_disabled(*safari, b"GET", mac)
    assert not browser_keepalive_disabled(*msie6, b"GET", mac)
    assert not browser_keepalive_disabled(*both, b"GET", mac.replace(b"Safari", b"Chrome/1 Safari"))


def test_every_header_the_upstream_head_never_carries_is_marked_when_read() -> None:
    """The request check marks these by position, and the upstream head relies on it."""
    from upsync.proxy import client
    from upsync.proxy.exchange import _SKIP_REQUEST_HEADERS

    marked = {
        name
        for name, kind in client._LISTED_REQUEST_HEADERS.items()
        if kind <= client._HOP and kind not in (client._UNDERSCORED, client._INVALID_NAME)
    }
    assert marked == set(_SKIP_REQUEST_HEADERS)


CONNECTION_VALUES = [
    b"close", b"Close", b"keep-alive", b"Keep-Alive", b"close, keep-alive", b"foo, close",
    b"foo close", b"closex", b"xclose", b"close ,x", b" close", b"close\t", b"upgrade, close",
    b"keep-alive,close", b",close", b"close,", b"clo se", b"close;x", b"Keep-alive , Upgrade",
    b"keep-alive close", b"a,,close", b"",
]  # fmt: skip


class KeepAliveAsked:
    """httptools callbacks that ask the parser whether the request keeps alive, where upsync
    asked it (the answer is gone once the message is complete)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.keep_alive: bool | None = None

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
@pytest.mark.parametrize("value", CONNECTION_VALUES)
def test_connection_tokens_keep_alive_as_the_parser_tells(version: bytes, value: bytes) -> None:
    """upsync reads keep-alive from the Connection headers it classifies anyway, instead of
    asking the parser per request: the two agree, with a second Connection header too."""
    for values in ([value], [value, b"foo"], [b"keep-alive", value], [b"close", value]):
        asked = KeepAliveAsked()
        lines = b"".join(b"Connection: %s\r\n" % v for v in values)
        asked.parser.feed_data(b"GET / HTTP/%s\r\nHost: x\r\n%s\r\n" % (version, lines))
        tokens = 0
        for v in values:
            tokens |= connection_tokens(v)
        ours = tokens & CONNECTION_KEEP_ALIVE if version == b"1.0" else not tokens & CONNECTION_CLOSE
        assert bool(ours) == asked.keep_alive, values
