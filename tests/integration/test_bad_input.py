"""Malformed or hostile requests get the right 4xx, and the next request is served normally."""

import random
import socket
import time

import pytest

from tests.helpers import Backend, free_port, raw_exchange, request, running_upsync


@pytest.fixture(scope="module")
def proxy():  # type: ignore[no-untyped-def]
    port = free_port()
    with Backend("a") as backend:
        text = f"""
events {{}}
http {{
    client_header_timeout 1s;
    client_body_timeout 1s;
    large_client_header_buffers 2 1k;
    upstream backend {{ server 127.0.0.1:{backend.port}; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 100;
        location / {{ proxy_pass http://backend; proxy_http_version 1.1; }}
        location = /local {{ return 200 "ok"; }}
    }}
}}
"""
        with running_upsync(text, port) as process:
            yield port, backend, process


def status_of(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1.1 "), reply[:80]
    return int(reply[9:12])


def assert_still_serving(port: int) -> None:
    assert request(port, "/")[0] == 200


CASES = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
    (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505),  # as nginx
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET /../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", 413),
    (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
    ),
    (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", 400),
    (b"CONNECT /x HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\rTransfer-Encoding: chunked\r\n\r\n", 400),  # bare CR
    # lines ended by bare LFs are parsed again by a lenient parser: the same answers
    (b"TRACE / HTTP/1.1\nHost: x\n\n", 405),
    (b"GET / HTTP/2.0\nHost: x\n\n", 505),
    (b"GET / HTTP/1.1\nHost: x\nHost: y\n\n", 400),
    # a method the parser does not know is parsed again with a stand-in line: its answer stays
    (b"FOO / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_bad_request_gets_4xx_and_next_request_works(proxy, raw: bytes, expected: int) -> None:  # type: ignore[no-untyped-def]
    port, backend, _ = proxy
    before = len(backend.requests)
    reply = raw_exchange(port, raw)
    assert status_of(reply) == expected
    assert b"Connection: close" in reply
    assert len(backend.requests) == before  # never forwarded
    assert_still_serving(port)


def test_chunked_body_over_limit_is_413(proxy) -> None:  # type: ignore[no-untyped-def]
    port, _, _ = proxy
    body = b"".join(b"40\r\n" + b"x" * 64 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    reply = raw_exchange(
        port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    )
    assert status_of(reply) == 413
    assert_still_serving(port)


def test_absolute_form_never_chooses_destination(proxy) -> None:  # type: ignore[no-untyped-def]
    port, backend, _ = proxy
    reply = raw_exchange(
        port, b"GET http://169.254.169.254/latest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status_of(reply) == 200
    assert reply.endswith(b"a\n")  # went to the configured upstream
    assert backend.requests[-1][1] == "/latest"


def test_line_ends_split_between_reads_are_accepted(proxy) -> None:  # type: ignore[no-untyped-def]
    """TCP may cut a head anywhere, between a CR and its LF too."""
    port, _, _ = proxy
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in (b"GET /local HTTP/1.1\r", b"\nHost: x\r", b"\nConnection: close\r\n\r", b"\n"):
            sock.sendall(piece)
            time.sleep(0.05)  # let each piece arrive as a read of its own
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert status_of(reply) == 200 and reply.endswith(b"ok")


def test_bare_cr_in_a_later_pipelined_head_is_rejected(proxy) -> None:  # type: ignore[no-untyped-def]
    port, backend, _ = proxy
    reply = raw_exchange(
        port,
        b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /second HTTP/1.1\rHost: x\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert b"HTTP/1.1 400 Bad Request" in reply
    assert "/second" not in [r[1] for r in backend.requests]


def test_silent_connection_is_closed_after_client_header_timeout(proxy) -> None:  # type: ignore[no-untyped-def]
    port, _, _ = proxy
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""  # not a byte sent: closed without an answer
        waited = time.monotonic() - started
        assert 0.9 < waited < 2.0  # client_header_timeout 1s, checked every 0.25 s
    assert status_of(raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 200


def test_stalled_client_is_cut_off(proxy) -> None:  # type: ignore[no-untyped-def]
    port, _, _ = proxy
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finishes the header
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by client_header_timeout
        assert time.monotonic() - started < 3
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nabc")  # body stalls
        started = time.monotonic()
        data = b""
        while chunk := sock.recv(100):
            data += chunk
        assert time.monotonic() - started < 3
    assert_still_serving(port)


def test_idle_connections_do_not_block_others(proxy) -> None:  # type: ignore[no-untyped-def]
    port, _, _ = proxy
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    try:
        assert_still_serving(port)
    finally:
        for sock in idle:
            sock.close()


def test_client_disconnect_mid_request_does_not_break_worker(proxy) -> None:  # type: ignore[no-untyped-def]
    port, _, process = proxy
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_still_serving(port)
    assert "Traceback" not in process.output()


def test_bad_chunk_after_a_local_answer_closes_without_hanging(proxy) -> None:  # type: ignore[no-untyped-def]
    port, _, _ = proxy
    started = time.monotonic()
    reply = raw_exchange(
        port,
        b"POST /local HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"ok")
    assert time.monotonic() - started < 1.0  # closed at once, not by a timeout
    assert_still_serving(port)


def test_header_trickled_slowly_is_still_cut_by_client_header_timeout(proxy) -> None:  # type: ignore[no-untyped-def]
    port, _, _ = proxy
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\n")
        closed = False
        for _ in range(40):  # a byte every 100 ms: each read is recent, the head never ends
            try:
                sock.sendall(b"X")
                time.sleep(0.1)  # the client's pace, part of the scenario
            except OSError:
                closed = True
                break
            sock.settimeout(0.001)
            try:
                if sock.recv(100) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed
        assert time.monotonic() - started < 2.5  # the 1 s timeout counts from the first byte


SEEDS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /a%2e%2e/b?x=1 HTTP/1.0\r\n\r\n",
    b"GET /local HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
]
SPLICES = [b"\r", b"\n", b"\r\n", b":", b" ", b"\x00", b"ffffffffffffffff", b"Content-Length: 3\r\n"]


def damaged(rnd: random.Random) -> bytes:
    data = bytearray(b"".join(rnd.choice(SEEDS) for _ in range(rnd.randint(1, 3))))
    for _ in range(rnd.randint(1, 6)):
        at = rnd.randrange(len(data))
        roll = rnd.random()
        if roll < 0.3:
            data[at] = rnd.randrange(256)
        elif roll < 0.5:
            del data[at : at + rnd.randint(1, 5)]
        elif roll < 0.7:
            data[at:at] = rnd.choice(SPLICES)
        else:
            data[at:at] = rnd.randbytes(rnd.randint(1, 10))
    return bytes(data)


def test_randomly_damaged_requests_never_take_the_worker_down(proxy) -> None:  # type: ignore[no-untyped-def]
    """Valid requests (pipelined, with bodies, chunked, upgrade) damaged at random: whatever the
    answers, no handler fails (no 500, nothing logged as an error in our code) and normal
    requests are served throughout."""
    port, _, process = proxy
    rnd = random.Random(20261124)
    for round_ in range(800):
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            reply = b""
            try:
                sock.sendall(damaged(rnd))
                sock.shutdown(socket.SHUT_WR)
                while chunk := sock.recv(65536):
                    reply += chunk
            except ConnectionResetError:
                pass
            assert b"HTTP/1.1 500 " not in reply
        if round_ % 200 == 0:
            assert_still_serving(port)
    assert_still_serving(port)
    log = (process.workdir / "error.log").read_text()
    assert "Traceback" not in log and "error while handling" not in log


def test_bad_body_of_a_queued_pipelined_request_is_answered_in_turn(proxy) -> None:  # type: ignore[no-untyped-def]
    port, _, _ = proxy
    reply = raw_exchange(
        port,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        timeout=3,
    )
    first, _, rest = reply.partition(b"HTTP/1.1 400")
    assert first.startswith(b"HTTP/1.1 200") and rest, reply[:300]
