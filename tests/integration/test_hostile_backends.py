"""Backends that misbehave: bytes after a response, early answers, unasked-for upgrades, huge
heads. A response is relayed exactly once, and only a clean connection is pooled."""

import contextlib
import socket
import time
from collections.abc import Callable, Iterator

from tests.helpers import (
    KeepAliveClient,
    RawRequest,
    Reply,
    ScriptedBackend,
    free_port,
    keepalive_proxy_config,
    ok_response,
    raw_exchange,
    request,
    running_upsync,
)

INJECTED = b"HTTP/1.1 200 OK\r\nSet-Cookie: session=stolen\r\nContent-Length: 8\r\n\r\ninjected"


def config(backend_port: int, port: int, extra: str = "") -> str:
    denied = "location /denied { deny all; proxy_pass http://backend; }"
    return keepalive_proxy_config(backend_port, port, extra, denied)


@contextlib.contextmanager
def proxy_to(
    reply: Callable[[RawRequest], Reply], extra: str = ""
) -> Iterator[tuple[int, ScriptedBackend]]:
    port = free_port()
    with ScriptedBackend(reply) as backend, running_upsync(config(backend.port, port, extra), port):
        yield port, backend


def misbehaving(path: str, bad: bytes) -> Callable[[RawRequest], Reply]:
    """Answers `path` with `bad`; every other request with a clean "ok <path>"."""

    def reply(req: RawRequest) -> Reply:
        if req.path == path:
            return bad, True
        return ok_response(b"ok " + req.path.encode()), True

    return reply


def test_bytes_after_content_length_are_dropped_not_relayed() -> None:
    with proxy_to(misbehaving("/extra", ok_response(b"ok") + INJECTED)) as (port, backend):
        client = KeepAliveClient(port)
        try:
            assert client.get("/extra")[2] == b"ok"
            status, headers, body = client.get("/next")
            assert (status, body) == (200, b"ok /next")
            assert "set-cookie" not in headers
            assert client.get("/third")[2] == b"ok /third"
        finally:
            client.close()
        # the connection that carried extra bytes was not reused
        assert backend.requests[1].connection != backend.requests[0].connection


def test_body_after_204_and_head_is_not_relayed() -> None:
    bad_204 = b"HTTP/1.1 204 No Content\r\n\r\n" + INJECTED
    with proxy_to(misbehaving("/nocontent", bad_204)) as (port, _):
        client = KeepAliveClient(port)
        try:
            assert client.get("/nocontent")[0] == 204
            assert client.get("/next")[2] == b"ok /next"
        finally:
            client.close()
    head_with_body = ok_response(b"body-of-head") + INJECTED
    with proxy_to(misbehaving("/head", head_with_body)) as (port, backend):
        client = KeepAliveClient(port)
        try:
            assert client.get("/head", method="HEAD")[0] == 200
            assert client.get("/next")[2] == b"ok /next"
        finally:
            client.close()
        assert backend.requests[1].connection != backend.requests[0].connection


def test_garbage_after_a_response_keeps_the_connection_out_of_the_pool() -> None:
    with proxy_to(misbehaving("/junk", ok_response(b"ok") + b"\x00\x01junk")) as (port, backend):
        assert request(port, "/junk")[2] == b"ok"
        # another client: a dirty pooled connection would answer 502 and fail the peer
        for _ in range(3):
            status, _, body = request(port, "/after")
            assert (status, body) == (200, b"ok /after")
        assert backend.requests[1].connection != backend.requests[0].connection


def test_early_answer_to_a_streamed_body_is_not_pooled() -> None:
    def reply(req: RawRequest) -> Reply:
        if req.path == "/upload":
            # never reads the body, and answers once the body has filled the socket buffers
            # (so upsync is holding the client back when the answer comes)
            time.sleep(0.3)
            return b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\ndenied", False
        return ok_response(b"ok " + req.path.encode()), True

    with proxy_to(reply, "client_max_body_size 0;") as (port, backend):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            # far more than loopback socket buffers hold: the body cannot all be written
            # before the early answer arrives
            size = 48 * 1024 * 1024
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
            answer = b""
            block = b"a" * 65536
            for _ in range(size // len(block)):
                sock.sendall(block)  # the rest is read and dropped: never held back for good
            with contextlib.suppress(OSError):
                while b"denied" not in answer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 401")
        for _ in range(3):
            status, _, body = request(port, "/next")
            assert (status, body) == (200, b"ok /next")
        upload = next(r for r in backend.requests if r.path == "/upload")
        assert all(r.connection != upload.connection for r in backend.requests if r is not upload)


def test_post_is_never_resent_when_a_pooled_connection_closes() -> None:
    def reply(req: RawRequest) -> Reply:
        if req.path == "/vanish":
            return None, True  # reads the request, then closes without an answer
        return ok_response(b"ok " + req.path.encode()), True

    with proxy_to(reply) as (port, backend):
        client = KeepAliveClient(port)
        try:
            assert client.get("/warm")[0] == 200  # leaves a pooled connection
            status, _, _ = client.get("/vanish", method="POST", body=b"pay=1")
        finally:
            client.close()
        assert status == 502
        assert [r.method for r in backend.requests if r.path == "/vanish"] == ["POST"]
        # an idempotent request on such a connection is retried on a fresh one, as before
        client = KeepAliveClient(port)
        try:
            assert client.get("/warm")[0] == 200
        finally:
            client.close()


def test_unrequested_101_does_not_open_a_tunnel() -> None:
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    )
    with proxy_to(misbehaving("/switch", switch)) as (port, backend):
        reply = raw_exchange(
            port,
            b"GET /switch HTTP/1.1\r\nHost: x\r\n\r\nGET /denied HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            timeout=3,
        )
        assert reply.startswith(b"HTTP/1.1 502"), reply[:200]
        assert b"101" not in reply.split(b"\r\n", 1)[0]
        assert b"403 Forbidden" in reply
        assert not any(r.path == "/denied" for r in backend.requests)


def test_response_head_is_bounded_by_proxy_buffer_size() -> None:
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 30) for i in range(5000))
    huge = b"HTTP/1.1 200 OK\r\n" + many + b"Content-Length: 2\r\n\r\nok"
    ten_kb = b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 10_000 + b"\r\nContent-Length: 2\r\n\r\nok"

    def reply(req: RawRequest) -> Reply:
        if req.path == "/huge":
            return huge, True
        if req.path == "/tenkb":
            return ten_kb, True
        return ok_response(), True

    with proxy_to(reply) as (port, _):
        assert request(port, "/huge")[0] == 502
        assert request(port, "/tenkb")[0] == 502  # over the default 4k
        assert request(port, "/fine")[0] == 200
    with proxy_to(reply, "proxy_buffer_size 16k;") as (port, _):
        status, headers, _ = request(port, "/tenkb")
        assert status == 200 and len(headers["x-big"]) == 10_000


def test_a_pooled_connection_is_reused_until_its_keepalive_time_then_replaced() -> None:
    """upstream keepalive_time: the same live upstream connection serves request after request
    (and a keep-alive client across them) until it is older than keepalive_time; the response
    after that closes it and the next request opens a new one."""

    def reply(req: RawRequest) -> Reply:
        return ok_response(b"ok " + str(req.connection).encode()), True

    port = free_port()
    with ScriptedBackend(reply) as backend:
        ages = "keepalive 8; keepalive_time 1s; keepalive_requests 1000000;"  # only age counts
        text = config(backend.port, port).replace("keepalive 8;", ages)
        with running_upsync(text, port):
            client = KeepAliveClient(port)
            try:
                started = time.monotonic()
                first = client.get("/")[2]
                assert client.get("/")[2] == first  # reused, not reconnected
                seen = first
                while seen == first:
                    assert time.monotonic() - started < 5, "the old connection was kept"
                    seen = client.get("/")[2]
                assert time.monotonic() - started >= 1.0  # not before its time
                assert seen == b"ok 2" and backend.connections == 2
            finally:
                client.close()
