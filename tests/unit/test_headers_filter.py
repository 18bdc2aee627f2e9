"""nginx's headers filter and header variables, fed data: expires values (fixed, per response,
from Last-Modified, a time of day), add_header's replacing headers and $sent_http_ of the lines
made so far, add_trailer's lines, and repeated request headers joined as nginx 1.23+ joins them."""

import time
from email.utils import parsedate_to_datetime

import pytest

from upsync.config.expires import Expires, ExpiresError, parse_expires
from upsync.config.variables import compile_template
from upsync.proxy import http1
from upsync.proxy.request import Request


class Connection:
    local = ("127.0.0.1", 80)
    remote = ("127.0.0.1", 5000)
    serial = 1
    maps: dict[str, object] = {}

    def age(self) -> float:
        return 0.0


def request(headers: list[tuple[bytes, bytes]], query: str = "") -> Request:
    req = Request(Connection())  # type: ignore[arg-type]
    req.headers = [part for pair in headers for part in pair]
    req.query = query
    return req


@pytest.mark.parametrize(
    ("text", "modified", "parsed"),
    [
        ("epoch", False, Expires("epoch")),
        ("max", False, Expires("max")),
        ("off", False, Expires("off")),
        ("1h", False, Expires("access", 3600)),
        ("-30", False, Expires("access", -30)),
        ("+1d", False, Expires("access", 86400)),
        ("@15h30m", False, Expires("daily", 15 * 3600 + 1800)),
        ("2048", True, Expires("modified", 2048)),
    ],
)
def test_expires_values(text: str, modified: bool, parsed: Expires) -> None:
    assert parse_expires(text, modified) == parsed


@pytest.mark.parametrize(
    ("text", "modified"),
    [("bad", False), ("", False), ("epoch", True), ("@1h", True), ("@25h", False), ("5ms", False)],
)
def test_expires_values_nginx_refuses(text: str, modified: bool) -> None:
    with pytest.raises(ExpiresError):
        parse_expires(text, modified)


def lines_of(made: bytes | None) -> dict[str, str]:
    assert made is not None
    return dict(line.split(": ", 1) for line in made.decode().split("\r\n") if line)


def test_expires_from_last_modified_and_per_response_values() -> None:
    now = 1_000_000.0
    req = request([])
    modified = lines_of(http1.expires_headers(Expires("modified", 2048), now, 1000.0, req))
    assert modified["Expires"] == "Thu, 01 Jan 1970 00:50:48 GMT"  # 1000 + 2048 after the epoch
    assert modified["Cache-Control"] == "no-cache"  # already past
    # without a Last-Modified, counted from now
    assert lines_of(http1.expires_headers(Expires("modified", 60), now, -1.0, req))[
        "Cache-Control"
    ] == "max-age=60"
    per_response = Expires("access", 0, compile_template("$arg_e"))
    for query, control in (("e=2048", "max-age=2048"), ("e=-5", "no-cache"), ("e=epoch", "no-cache")):
        assert lines_of(http1.expires_headers(per_response, now, -1, request([], query)))[
            "Cache-Control"
        ] == control
    for query in ("e=bad", "e=off", ""):  # the response's own headers are left alone
        assert http1.expires_headers(per_response, now, -1, request([], query)) is None


def test_expires_at_a_time_of_day_is_the_next_one() -> None:
    now = time.time()
    made = lines_of(http1.expires_headers(Expires("daily", 33), now, -1.0, request([])))
    at = parsedate_to_datetime(made["Expires"]).timestamp()
    assert 0 < at - now <= 86400 + 3600  # within a day (a DST change adds an hour)
    assert time.localtime(at).tm_sec == 33 and time.localtime(at).tm_min == 0


def test_add_header_replaces_etag_and_last_modified_and_sees_earlier_lines() -> None:
    added = tuple(
        (name, compile_template(value), False)
        for name, value in (
            ("Cache-Control", "a"),
            ("Cache-Control", "b"),
            ("X-Seen", "$sent_http_cache_control"),
            ("ETag", "foo"),
            ("ETag", ""),
            ("Last-Modified", "x"),
        )
    )
    req = request([])
    made = [b"Cache-Control: up\r\n"]
    req.extras().headers_out = made
    lines, replaced = http1.added_headers(added, 200, req, made)
    assert lines == (
        b"Cache-Control: a\r\nCache-Control: b\r\nX-Seen: up, a, b\r\nLast-Modified: x\r\n"
    )
    assert set(replaced) == {b"etag:", b"last-modified:"}
    own = [b"ETag: \"1\"\r\n", b"Last-Modified: y\r\n", b"X-Other: 1\r\n"]
    assert http1.drop_headers(own, replaced) == [b"X-Other: 1\r\n"]
    # not for a 404 unless `always`: nothing replaced
    assert http1.added_headers(added, 404, req, []) == (b"", ())


def test_add_trailer_lines_see_the_earlier_trailers() -> None:
    trailers = tuple(
        (name, compile_template(value), always)
        for name, value, always in (
            ("Foo", "foo", False),
            ("Foo", "bar", False),
            ("X-Sent", "$sent_trailer_foo", False),
            ("X-Empty", "", False),
            ("X-Always", "yes", True),
        )
    )
    req = request([])
    made: list[bytes] = []
    req.extras().sent_trailers = made
    assert http1.trailer_lines(trailers, 200, req, made) == (
        b"Foo: foo\r\nFoo: bar\r\nX-Sent: foo, bar\r\nX-Always: yes\r\n"
    )
    assert http1.trailers_apply(trailers, 500)  # the `always` one
    assert http1.trailer_lines(trailers, 500, req, []) == b"X-Always: yes\r\n"
    assert http1.chunked_whole(b"abc", b"T: 1\r\n") == b"3\r\nabc\r\n0\r\nT: 1\r\n\r\n"
    assert http1.chunked_whole(b"", b"") == b"0\r\n\r\n"


def test_repeated_request_headers_are_joined_as_nginx_joins_them() -> None:
    req = request(
        [
            (b"Cookie", b"a=1"),
            (b"X-Forwarded-For", b"1.1.1.1"),
            (b"cookie", b"b=2; c=3"),
            (b"X-Forwarded-For", b"2.2.2.2"),
            (b"Content-Type", b"foo"),
            (b"Content-Type", b"bar"),
        ]
    )
    assert req.variable("http_cookie") == "a=1; b=2; c=3"
    assert req.variable("http_x_forwarded_for") == "1.1.1.1, 2.2.2.2"
    assert req.variable("content_type") == "foo, bar"
    assert req.variable("cookie_b") == "2"  # found in the second Cookie header
    assert req.variable("cookie_c") == "3"
    assert req.variable("http_missing") == ""


def test_upstream_cookie_is_read_as_nginx_reads_it() -> None:
    req = request([])
    req.upstream_lines = [
        b"Set-Cookie: a=1; Path=/\r\n",
        b"Set-Cookie: tc=\r\n",
        b"Set-Cookie: tab\t=\tx\r\n",
        b"Set-Cookie: sp =  con  tent ; Domain=x\r\n",
    ]
    assert req.variable("upstream_cookie_a") == "1"
    assert req.variable("upstream_cookie_tc") == ""  # never the line's end
    assert req.variable("upstream_cookie_tab") == ""  # a tab is no space to nginx
    assert req.variable("upstream_cookie_sp") == "con  tent"


def test_the_constant_200_status_line_is_the_one_status_line_makes() -> None:
    assert http1.STATUS_200 == http1.status_line(200) == b"HTTP/1.1 200 OK\r\n"


def test_header_memory_gives_a_line_again_only_for_the_same_name_and_value() -> None:
    memory = http1.HeaderMemory(http1.HeaderClasses({}, 0))

    def line(index: int, name: bytes, value: bytes) -> bytes:
        memory.kind(index, name)  # as the connections ask: the kind first, then the line
        return memory.line(index, name, value)

    first = line(0, b"Content-Type", b"text/html")
    assert first == b"Content-Type: text/html\r\n"
    assert line(0, b"Content-Type", b"text/html") is first  # remembered
    assert line(0, b"Content-Type", b"text/plain") == b"Content-Type: text/plain\r\n"
    assert line(0, b"X-Other", b"text/plain") == b"X-Other: text/plain\r\n"  # another name there
    assert line(0, b"x-other", b"text/plain") == b"x-other: text/plain\r\n"  # spelled otherwise
    assert line(1, b"X-Other", b"text/plain") == b"X-Other: text/plain\r\n"
    # asked without kind() (a retry after a later request was read): the name is checked too
    memory.kind(0, b"X-New")
    assert memory.line(0, b"X-Old", b"v") == b"X-Old: v\r\n"
    assert memory.line(0, b"X-New", b"v") == b"X-New: v\r\n"
    assert memory.line(0, b"X-Old", b"v") == b"X-Old: v\r\n"
    for index in range(40):  # past the positions remembered, lines are made each time
        assert line(index, b"X-%d" % index, b"v") == b"X-%d: v\r\n" % index
