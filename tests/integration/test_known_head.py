"""A pooled upstream connection learns the last response head it read whole and reads a response
that starts with the same bytes without a call per header (upstream_conn.KnownHead). Every
case here runs on one pooled connection, so each response after the first may take that path:
whatever changes between two heads, however little, and whatever a head means per request or
per location, each response is still relayed as its own."""

import http.client
import socket
from collections.abc import Callable

import pytest

from tests.helpers import (
    KeepAliveClient,
    RawRequest,
    ScriptedBackend,
    free_port,
    keepalive_proxy_config,
    ok_response,
    running_upsync,
)

Script = Callable[[RawRequest], tuple[bytes | None, bool]]


def by_path(responses: dict[str, bytes]) -> Script:
    return lambda req: (responses[req.path.split("?")[0]], True)


Answer = tuple[int, dict[str, str], bytes]


def through_one_connection(
    reply: Script, paths: list[str], methods: list[str] | None = None
) -> tuple[list[Answer], ScriptedBackend]:
    """`paths` asked in turn on one client connection through upsync, in front of a scripted
    backend reached over pooled connections: the answers, and the backend with its record."""
    port = free_port()
    with ScriptedBackend(reply) as backend:
        with running_upsync(keepalive_proxy_config(backend.port, port), port):
            client = KeepAliveClient(port)
            answers = [
                client.get(path, method=methods[n] if methods else "GET")
                for n, path in enumerate(paths)
            ]
            client.close()
    return answers, backend


def test_a_head_repeated_with_one_value_changed_in_place_passes_each_value() -> None:
    # same lengths throughout: only the bytes tell the heads apart
    one = ok_response(b"aa", b"X-Up: 1\r\nContent-Type: text/a\r\n")
    two = ok_response(b"bb", b"X-Up: 2\r\nContent-Type: text/a\r\n")
    paths = ["/1", "/1", "/2", "/2", "/1", "/2"]
    answers, backend = through_one_connection(by_path({"/1": one, "/2": two}), paths)
    assert backend.connections == 1
    for path, (status, headers, body) in zip(paths, answers, strict=True):
        assert status == 200
        assert headers["x-up"] == path[1:]
        assert headers["content-type"] == "text/a"
        assert body == (b"aa" if path == "/1" else b"bb")


def test_a_repeated_head_keeps_its_framing_for_each_body() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: c\r\n\r\n"
    bodies = {"/c1": b"3\r\nabc\r\n0\r\n\r\n", "/c2": b"1\r\nx\r\n2\r\nyz\r\n0\r\n\r\n"}
    responses = {path: chunked + body for path, body in bodies.items()}
    responses["/n"] = ok_response(b"plain", b"X-Up: c\r\n")
    paths = ["/c1", "/c1", "/c2", "/n", "/c2", "/n"]
    expected = {"/c1": b"abc", "/c2": b"xyz", "/n": b"plain"}
    answers, backend = through_one_connection(by_path(responses), paths)
    assert backend.connections == 1
    assert [body for _, _, body in answers] == [expected[path] for path in paths]


def test_heads_rewritten_per_request_are_rewritten_for_each_request() -> None:
    """Location (proxy_redirect) and Set-Cookie (proxy_cookie_domain with $host) depend on the
    request: the same upstream head gives each client its own."""
    redirect = b"HTTP/1.1 302 Found\r\nLocation: http://backend/next\r\nContent-Length: 0\r\n\r\n"
    cookie = ok_response(b"ok", b"Set-Cookie: id=1; Domain=backend.example\r\n")
    hosts = ["a.test", "b.test", "a.test", "c.test"]
    port = free_port()
    with ScriptedBackend(by_path({"/r": redirect, "/c": cookie})) as backend:
        config = keepalive_proxy_config(
            backend.port, port, "proxy_cookie_domain backend.example $host;"
        )
        with running_upsync(config, port):
            client = KeepAliveClient(port)
            redirects = [client.get("/r", headers={"Host": host}) for host in hosts]
            cookies = [client.get("/c", headers={"Host": host}) for host in hosts]
            client.close()
    assert backend.connections == 1
    for host, (status, headers, _) in zip(hosts, redirects, strict=True):
        assert status == 302
        assert headers["location"] == f"http://{host}:{port}/next"
    for host, (status, headers, _) in zip(hosts, cookies, strict=True):
        assert status == 200
        assert headers["set-cookie"] == f"id=1; Domain={host}"


def two_locations(backend_port: int, port: int, first: str, second: str) -> str:
    """Two locations proxying to one upstream, so its pooled connections serve both."""
    return f"""
events {{}}
http {{
    upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location {first}
        location {second}
    }}
}}
"""


def test_each_location_applies_its_own_header_rules_to_a_shared_connection() -> None:
    head = ok_response(b"ok", b"X-Secret: s\r\nX-Up: u\r\n")
    port = free_port()
    with ScriptedBackend(lambda req: (head, True)) as backend:
        config = two_locations(
            backend.port,
            port,
            "/hide/ { proxy_pass http://backend; proxy_hide_header X-Secret; }",
            "/show/ { proxy_pass http://backend; }",
        )
        paths = ["/hide/1", "/hide/2", "/show/1", "/show/2", "/hide/3", "/show/3"]
        with running_upsync(config, port):
            client = KeepAliveClient(port)
            answers = [client.get(path) for path in paths]
            client.close()
    assert backend.connections == 1
    for path, (status, headers, body) in zip(paths, answers, strict=True):
        assert (status, body, headers["x-up"]) == (200, b"ok", "u")
        assert ("x-secret" in headers) == path.startswith("/show/")


def test_a_location_with_a_smaller_proxy_buffer_size_refuses_a_head_learnt_elsewhere() -> None:
    head = ok_response(b"ok", b"X-Long: " + b"v" * 1500 + b"\r\n")
    port = free_port()
    with ScriptedBackend(lambda req: (head, True)) as backend:
        config = two_locations(
            backend.port,
            port,
            "/big/ { proxy_pass http://backend; proxy_buffer_size 4k; }",
            "/small/ { proxy_pass http://backend; proxy_buffer_size 1k; }",
        )
        with running_upsync(config, port):
            client = KeepAliveClient(port)
            statuses = [client.get(path)[0] for path in ["/big/1", "/big/2", "/small/1", "/big/3"]]
            client.close()
    assert statuses == [200, 200, 502, 200]


def test_a_head_request_between_repeated_heads_leaves_the_connection_in_step() -> None:
    """HEAD's answer has the head of a GET's and no body: the parser that waited for that body
    is let go, and the next response is read from its start."""

    def reply(req: RawRequest) -> tuple[bytes, bool]:
        response = ok_response(b"hello", b"X-Up: h\r\n")
        return (response[: -len(b"hello")] if req.method == "HEAD" else response), True

    methods = ["GET", "GET", "HEAD", "GET", "HEAD", "HEAD", "GET", "GET"]
    answers, backend = through_one_connection(reply, ["/h"] * len(methods), methods)
    assert backend.connections == 1
    for method, (status, headers, body) in zip(methods, answers, strict=True):
        assert (status, headers["content-length"], headers["x-up"]) == (200, "5", "h")
        assert body == (b"" if method == "HEAD" else b"hello")


def test_an_interim_response_before_a_repeated_head_is_not_relayed() -> None:
    final = ok_response(b"done", b"X-Up: f\r\n")

    def reply(req: RawRequest) -> tuple[bytes, bool]:
        interim = b"HTTP/1.1 100 Continue\r\n\r\n" if req.path == "/interim" else b""
        return interim + final, True

    paths = ["/plain", "/interim", "/interim", "/plain", "/interim", "/interim"]
    answers, backend = through_one_connection(reply, paths)
    assert backend.connections == 1
    assert [(status, body) for status, _, body in answers] == [(200, b"done")] * len(paths)


def test_a_head_whose_lines_end_in_bare_lf_is_read_whole_each_time() -> None:
    def lf_response(value: bytes, body: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\nContent-Length: %d\nX-Up: %s\n\n%s" % (len(body), value, body)

    responses = {
        "/1": lf_response(b"1", b"one"),
        "/2": lf_response(b"2", b"two"),
        "/3": lf_response(b"1", b"two"),
    }
    paths = ["/1", "/1", "/2", "/3", "/1", "/3"]
    answers, backend = through_one_connection(by_path(responses), paths)
    assert backend.connections == 1
    for path, (status, headers, body) in zip(paths, answers, strict=True):
        assert status == 200
        assert headers["x-up"] == responses[path].split(b"X-Up: ")[1][:1].decode()
        assert body == responses[path].rpartition(b"\n\n")[2]


def test_bytes_after_a_repeated_response_retire_its_connection() -> None:
    def reply(req: RawRequest) -> tuple[bytes, bool]:
        tail = b"HTTP/1.1 200 OK\r\n" if req.path == "/extra" else b""
        return ok_response(b"ok", b"X-Up: t\r\n") + tail, True

    answers, backend = through_one_connection(reply, ["/a", "/a", "/extra", "/a", "/a"])
    assert [(status, body) for status, _, body in answers] == [(200, b"ok")] * 5
    # the connection that sent more than its response is never asked again
    assert backend.connections == 2
    assert [r.connection for r in backend.requests] == [1, 1, 1, 2, 2]


def test_a_repeated_head_with_a_broken_body_fails_that_response_only() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: b\r\n\r\n"
    responses = {"/good": head + b"2\r\nok\r\n0\r\n\r\n", "/bad": head + b"zz\r\nok\r\n0\r\n\r\n"}
    port = free_port()
    with ScriptedBackend(by_path(responses)) as backend:
        with running_upsync(keepalive_proxy_config(backend.port, port), port):
            client = KeepAliveClient(port)
            assert client.get("/good")[2] == b"ok"
            assert client.get("/good")[2] == b"ok"
            # the head is relayed before the bad chunk is seen: the client's response is cut
            with pytest.raises((http.client.HTTPException, OSError)):
                client.get("/bad")
            client.close()
            again = KeepAliveClient(port)
            assert again.get("/good")[2] == b"ok"
            assert again.get("/good")[2] == b"ok"
            again.close()
    # the connection that sent the bad body is closed; a new one serves the rest
    assert [r.connection for r in backend.requests] == [1, 1, 1, 2, 2]


def test_a_repeated_head_that_comes_in_pieces_is_read_whole() -> None:
    """A response whose first read may hold only part of the learnt head: parsed as any other,
    whichever way its bytes are cut."""
    full = ok_response(b"split", b"X-Up: s\r\n")
    cuts = [len(full), 5, 20, len(full) - 8, len(full)]
    port = free_port()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        backend_port = listener.getsockname()[1]
        with running_upsync(keepalive_proxy_config(backend_port, port), port):
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.settimeout(5)
                upstream: socket.socket | None = None
                for cut in cuts:
                    client.sendall(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
                    if upstream is None:
                        upstream, _ = listener.accept()
                        upstream.settimeout(5)
                        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    request = b""
                    while b"\r\n\r\n" not in request:
                        request += upstream.recv(65536)
                    upstream.sendall(full[:cut])
                    upstream.sendall(full[cut:])
                    answer = b""
                    while not answer.endswith(b"split"):
                        chunk = client.recv(65536)
                        assert chunk, answer
                        answer += chunk
                    assert answer.startswith(b"HTTP/1.1 200") and b"X-Up: s\r\n" in answer
                    assert answer.count(b"HTTP/1.1") == 1
                assert upstream is not None
                upstream.close()


def test_heads_that_never_repeat_are_each_relayed_as_they_came() -> None:
    """A backend with a new value in each head (a request id): the connection learns ever more
    rarely, and every response, learnt or not, is its own."""
    counter = iter(range(1_000_000))

    def reply(req: RawRequest) -> tuple[bytes, bool]:
        n = next(counter)
        # every third response repeats the one before: some heads do come back
        value = b"%06d" % (n - n % 3 if n % 3 == 2 else n)
        return ok_response(b"body-" + value, b"X-Id: " + value + b"\r\n"), True

    answers, backend = through_one_connection(reply, ["/id"] * 300)
    assert backend.connections == 1
    for status, headers, body in answers:
        assert status == 200
        assert body == b"body-" + headers["x-id"].encode()
    ids = [headers["x-id"] for _, headers, _ in answers]
    assert ids[:6] == ["000000", "000001", "000000", "000003", "000004", "000003"]


def test_a_learnt_head_takes_no_trailer_of_the_response_it_came_with() -> None:
    """A chunked response's trailer fields are read after its head: they never become header
    lines of a later response that repeats the head."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: t\r\n\r\n"
    with_trailer = head + b"2\r\nok\r\n0\r\nX-Trail: 1\r\n\r\n"
    answers, backend = through_one_connection(lambda req: (with_trailer, True), ["/t"] * 4)
    assert backend.connections == 1
    for status, headers, body in answers:
        assert (status, body, headers["x-up"]) == (200, b"ok", "t")
        assert "x-trail" not in headers
