"""Requests crafted to slip past the proxy: escaped paths, non-ASCII bytes, trailers, bare CRs,
invalid header names, parser corner cases, and answers given before a body was read. What the
upstream receives is checked byte for byte (the backend echoes the request head it read)."""

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    KeepAliveClient,
    RawRequest,
    Reply,
    ScriptedBackend,
    free_port,
    ok_response,
    raw_exchange,
    running_upsync,
    wait_until,
)
from upsync.proxy.http1 import error_body as http1_error_body


def echo(req: RawRequest) -> Reply:
    return ok_response(req.head + b"\r\n\r\n" + req.body), True


def proxy_config(backend_port: int, port: int, workdir: str, server_extra: str = "") -> str:
    return f"""
events {{}}
http {{
    log_format uri '$uri|$request_uri';
    upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 1k;
        {server_extra}
        location /static/ {{
            proxy_pass http://backend/public/;
            proxy_set_header X-Uri $uri;
            access_log {workdir}/access.log uri;
        }}
        location / {{ proxy_pass http://backend; proxy_http_version 1.1; }}
    }}
}}
"""


@contextlib.contextmanager
def proxy(server_extra: str = "") -> Iterator[tuple[int, ScriptedBackend, Path]]:
    port = free_port()
    with ScriptedBackend(echo) as backend, contextlib.ExitStack() as stack:
        import tempfile

        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stack.enter_context(
            running_upsync(proxy_config(backend.port, port, str(workdir), server_extra), port)
        )
        yield port, backend, workdir


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[int, ScriptedBackend, Path]]:
    with proxy() as running:
        yield running


def upstream_line(backend: ScriptedBackend) -> bytes:
    return backend.requests[-1].head.split(b"\r\n", 1)[0]


def send(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    return raw_exchange(port, data, timeout=timeout)


def test_escaped_percent_stays_escaped_past_the_prefix(shared) -> None:  # type: ignore[no-untyped-def]
    port, backend, _ = shared
    close = b"Host: x\r\nConnection: close\r\n\r\n"
    assert send(port, b"GET /static/%252e%252e/admin HTTP/1.1\r\n" + close).startswith(
        b"HTTP/1.1 200"
    )
    assert upstream_line(backend) == b"GET /public/%252e%252e/admin HTTP/1.0"
    send(port, b"GET /static/100%25 HTTP/1.1\r\n" + close)
    assert upstream_line(backend) == b"GET /public/100%25 HTTP/1.0"


def test_non_ascii_uri_bytes_reach_the_upstream_and_the_log(shared) -> None:  # type: ignore[no-untyped-def]
    port, backend, workdir = shared
    client = KeepAliveClient(port)
    try:
        assert client.get("/static/caf%C3%A9")[0] == 200
        assert upstream_line(backend) == b"GET /public/caf%C3%A9 HTTP/1.0"
        for path, raw in (
            ("/static/%E2%82%AC", b"/static/\xe2\x82\xac"),
            ("/static/%ff", b"/static/\xff"),
        ):
            status, _, body = client.get(path)
            assert status == 200
            assert b"X-Uri: " + raw + b"\r\n" in body
        # the same keep-alive connection goes on
        assert client.get("/static/next")[0] == 200
    finally:
        client.close()
    log = workdir / "access.log"
    wait_until(lambda: "\\xE2\\x82\\xAC" in log.read_text(encoding="latin-1"))
    assert "/static/\\xFF|/static/%ff" in log.read_text(encoding="latin-1")


def test_chunked_trailers_never_become_request_headers(shared) -> None:  # type: ignore[no-untyped-def]
    port, backend, _ = shared
    reply = send(
        port,
        b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"3\r\nabc\r\n0\r\nAuthorization: forged\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200")
    head = backend.requests[-1].head.lower()
    assert b"authorization" not in head and b"6.6.6.6" not in head
    assert backend.requests[-1].body == b"abc"


def test_bare_cr_in_chunk_framing_is_400_but_is_data_inside_a_chunk(shared) -> None:  # type: ignore[no-untyped-def]
    port, backend, _ = shared
    start = (
        b"POST /cr HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    before = len(backend.requests)
    assert send(port, start + b"3\rabc\r\n0\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert send(port, start + b"3\r\nabc\r5\r\nGET /x\r\n0\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert len(backend.requests) == before
    assert send(port, start + b"5\r\na\rb\rc\r\n0\r\n\r\n").startswith(b"HTTP/1.1 200")
    assert backend.requests[-1].body == b"a\rb\rc"


def test_invalid_header_names_are_dropped_by_default(shared) -> None:  # type: ignore[no-untyped-def]
    port, backend, _ = shared
    reply = send(
        port,
        b"GET /h HTTP/1.1\r\nHost: x\r\nX_Real_IP: 6.6.6.6\r\nX.Dot: 1\r\nX-Fine: 2\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200")
    head = backend.requests[-1].head
    assert b"X_Real_IP" not in head and b"X.Dot" not in head and b"X-Fine: 2" in head


def test_underscores_in_headers_on_passes_them() -> None:
    with proxy("underscores_in_headers on;") as (port, backend, _):
        send(port, b"GET /h HTTP/1.1\r\nHost: x\r\nX_Real_IP: 1.2.3.4\r\nConnection: close\r\n\r\n")
        assert b"X_Real_IP: 1.2.3.4" in backend.requests[-1].head
    with proxy("ignore_invalid_headers off;") as (port, backend, _):
        send(port, b"GET /h HTTP/1.1\r\nHost: x\r\nX.Dot: 1\r\nConnection: close\r\n\r\n")
        assert b"X.Dot: 1" in backend.requests[-1].head


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"b" * 9000 + b"\r\n\r\n", 400),
    ],
)
def test_request_lines_nginx_refuses(shared, raw: bytes, status: int) -> None:  # type: ignore[no-untyped-def]
    port, backend, _ = shared
    before = len(backend.requests)
    reply = send(port, raw)
    assert reply.startswith(b"HTTP/1.1 %d" % status), reply[:80]
    assert len(backend.requests) == before


@pytest.mark.parametrize(
    ("raw", "upstream"),
    [
        (b"FOOBAR /m HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"FOOBAR /m HTTP/1.1"),
        (
            b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /caf\xc3\xa9 HTTP/1.1",
        ),
        (
            b"GET /e HTTP/1.1\r\nHost: x\r\nExpect: foo\r\nConnection: close\r\n\r\n",
            b"GET /e HTTP/1.1",
        ),
        (
            b"GET http://x/p?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /p?q=1 HTTP/1.1",
        ),
        (
            b"GET http://x?q=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /?q=2 HTTP/1.1",
        ),
        (b"GET / HTTP/1.2\r\nHost: x\r\nConnection: close\r\n\r\n", b"GET / HTTP/1.1"),
    ],
)
def test_requests_nginx_proxies(shared, raw: bytes, upstream: bytes) -> None:  # type: ignore[no-untyped-def]
    port, backend, _ = shared
    reply = send(port, raw)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:80]
    assert upstream_line(backend) == upstream


def test_chunked_body_framed_with_bare_lfs_is_taken(shared) -> None:  # type: ignore[no-untyped-def]
    port, backend, _ = shared
    start = b"POST /lf HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    for framing in (b"3\nabc\n0\n\n", b"3\nabc\n0\nX-T: 1\n\n", b"3\r\nabc\r\n0\n\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            sock.sendall(start + framing)
            assert sock.recv(12) == b"HTTP/1.1 200"  # at once, not at client_body_timeout
        assert backend.requests[-1].body == b"abc"
    # the same on a kept-alive connection, with the next request after the answer
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(start + b"3\nabc\n0\n\n")
        assert sock.recv(12) == b"HTTP/1.1 200"
        sock.recv(65536)
        sock.sendall(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        assert (
            answer.count(b"HTTP/1.1 200") == 1 and upstream_line(backend) == b"GET /after HTTP/1.1"
        )


def read_answers(sock: socket.socket, count: int) -> bytes:
    """What the proxy answers until `count` whole answers (each ends with the echoed head's
    blank line and the backend's "ok") have come, or the connection closes."""
    data = b""
    while data.count(b"HTTP/1.1 ") < count or not data.endswith((b"\r\n\r\n", b"0\r\n\r\n")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_line_ends_are_judged_across_a_kept_alive_connection(shared) -> None:  # type: ignore[no-untyped-def]
    """The parser is strict about line ends until a client sends a bare LF where nginx takes
    one; each switch point keeps refusing bare CRs and taking bare LFs, on one connection."""
    port, backend, _ = shared
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(b"GET /crlf HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answers(sock, 1).startswith(b"HTTP/1.1 200")
        # the next request's line ends with a bare LF: parsed again by a lenient parser
        sock.sendall(b"GET /lf HTTP/1.1\nHost: x\n\n")
        assert read_answers(sock, 1).startswith(b"HTTP/1.1 200")
        assert upstream_line(backend) == b"GET /lf HTTP/1.1"
        # lenient now: a bare CR ending a line is still refused
        sock.sendall(b"GET /cr HTTP/1.1\rHost: x\r\n\r\n")
        assert read_answers(sock, 1).startswith(b"HTTP/1.1 400")
    assert upstream_line(backend) == b"GET /lf HTTP/1.1"


@pytest.mark.parametrize(
    ("pieces", "status"),
    [
        ((b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\nHost: x\n\n",), 200),
        ((b"GET /sp", b"lit HTTP/1.1\nHost: x\n\n"), 200),
        ((b"GET /c HTTP/1.", b"1\nHost: x\n\n"), 200),
        ((b"GET /d HTTP/1.1", b"\rHost: x\r\n\r\n"), 400),
    ],
)
def test_request_lines_not_seen_whole_are_judged_as_nginx_judges_them(  # type: ignore[no-untyped-def]
    shared, pieces: tuple[bytes, ...], status: int
) -> None:
    """A request line pipelined behind another, or cut between reads: a bare LF ending it is
    taken, a bare CR refused, as for a line seen whole."""
    port, _, _ = shared
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.05)  # not a wait for a condition: each piece a read of its own
        answers = read_answers(sock, 2 if len(pieces) == 1 else 1)
    assert answers.startswith(b"HTTP/1.1 200" if len(pieces) == 1 else b"HTTP/1.1 %d" % status)
    assert answers.count(b"HTTP/1.1 %d" % status) == (2 if len(pieces) == 1 else 1), answers


@pytest.mark.parametrize(
    ("framing", "status", "body"),
    [
        (b"3\nabc\n0\n\n", 200, b"abc"),  # bare LFs: taken, as nginx takes them
        (b"3\rabc\r\n0\r\n\r\n", 400, None),  # a bare CR in the framing
        (b"3\r\na\rc\r\n0\r\n\r\n", 200, b"a\rc"),  # a bare CR inside a chunk: data
    ],
)
def test_chunked_body_behind_a_pipelined_request_is_framed_as_nginx_frames_it(  # type: ignore[no-untyped-def]
    shared, framing: bytes, status: int, body: bytes | None
) -> None:
    """A chunked head that is not the first of its read: the parser turns lenient about the
    body's line ends in the middle of the read, having checked the read for bare CRs."""
    port, backend, _ = shared
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(
            b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + framing
        )
        answers = read_answers(sock, 2)
    assert answers.startswith(b"HTTP/1.1 200")
    assert answers.count(b"HTTP/1.1 %d" % status) == (2 if status == 200 else 1), answers
    if body is not None:
        assert backend.requests[-1].body == body
    else:
        assert upstream_line(backend) == b"GET /first HTTP/1.1"


def test_request_pipelined_after_a_declined_upgrade_is_answered(shared) -> None:  # type: ignore[no-untyped-def]
    port, backend, _ = shared
    reply = send(
        port,
        b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert reply.count(b"HTTP/1.1 200") == 2, reply[:300]
    assert upstream_line(backend) == b"GET /after HTTP/1.1"


def test_http09_request_is_served_with_the_body_alone(shared) -> None:  # type: ignore[no-untyped-def]
    port, backend, _ = shared
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(b"GET /static/x\r\n")
        answer = b""
        while chunk := sock.recv(4096):  # closed after the answer, not left to a timeout
            answer += chunk
    # the backend echoes what it received: upsync asked for it as HTTP/1.0
    assert answer.startswith(b"GET /public/x HTTP/1.0\r\n"), answer[:100]
    assert upstream_line(backend) == b"GET /public/x HTTP/1.0"
    assert send(port, b"POST /x\r\n") == http1_error_body(400)


def test_answer_before_the_body_is_read_arrives_without_a_reset(shared) -> None:  # type: ignore[no-untyped-def]
    port, _, _ = shared
    body = b"x" * 200_000
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
            with contextlib.suppress(OSError):
                sock.sendall(body)
            answer = b""
            while True:
                chunk = sock.recv(65536)  # a reset would raise here
                if not chunk:
                    break
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 413")
