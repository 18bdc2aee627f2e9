"""A keep-alive client connection keeps the last read that held one whole request without a
body, with the parser's calls for it; a read of the same bytes makes those calls again without
parsing (client.KnownRequest). Whatever the client repeats, each request is still a request of
its own: its own id, count and answer, every rule applied again, and any change of a byte seen."""

import socket

from tests.helpers import RawRequest, ScriptedBackend, free_port, ok_response, running_upsync


def read_answers(sock: socket.socket, count: int) -> list[bytes]:
    """`count` whole responses with Content-Length bodies, as head + body each."""
    data = b""
    answers: list[bytes] = []
    while len(answers) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, (answers, data)
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk, (answers, data)
            rest += chunk
        answers.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:]
    assert data == b""
    return answers


def one_by_one(sock: socket.socket, sends: list[bytes]) -> list[bytes]:
    """Each of `sends` written once the answer to the one before is read: the answers."""
    answers: list[bytes] = []
    for send in sends:
        sock.sendall(send)
        answers += read_answers(sock, 1)
    return answers


def body_of(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


def config(port: int, extra: str = "", backend_port: int = 0) -> str:
    """/id and /other answer themselves; /up proxies to `backend_port` (unused when 0)."""
    upstream = f"upstream backend {{ server 127.0.0.1:{backend_port or free_port()}; keepalive 4; }}"
    return f"""
events {{}}
http {{
    {upstream}
    server {{
        listen 127.0.0.1:{port};
        {extra}
        location /id {{ return 200 "$request_id $connection_requests $uri $args $http_x_a."; }}
        location /other {{ return 200 "other $http_x_a."; }}
        location /up {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Count $connection_requests;
        }}
    }}
}}
"""


def test_each_repeated_request_is_answered_as_its_own() -> None:
    port = free_port()
    request = b"GET /id?q=1 HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\r\n"
    with running_upsync(config(port), port), socket.create_connection(("127.0.0.1", port)) as c:
        c.settimeout(5)
        bodies = [body_of(answer).decode() for answer in one_by_one(c, [request] * 6)]
    ids = [body.split()[0] for body in bodies]
    assert len(set(ids)) == 6  # a request id of its own each time
    assert [body.split(" ", 1)[1] for body in bodies] == [f"{n} /id q=1 a." for n in range(1, 7)]


def test_a_change_of_any_byte_is_seen() -> None:
    port = free_port()
    sends = [
        b"GET /id HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\r\n",
        b"GET /id HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\r\n",
        b"GET /id HTTP/1.1\r\nHost: x\r\nX-A: b\r\n\r\n",  # one byte of a value
        b"GET /id HTTP/1.1\r\nHost: x\r\nX-A: b\r\n\r\n",
        b"GET /ot HTTP/1.1\r\nHost: x\r\nX-A: b\r\n\r\n",  # the target, same length: 404
        b"GET /other HTTP/1.1\r\nHost: x\r\nX-A: b\r\n\r\n",
        b"GET /other HTTP/1.1\r\nHost: x\r\nX-A: b\r\n\r\n",
        b"GET /id HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\r\n",  # back to the first
    ]
    with running_upsync(config(port), port), socket.create_connection(("127.0.0.1", port)) as c:
        c.settimeout(5)
        answers = one_by_one(c, sends)
    bodies = [body_of(answer) for answer in answers]
    assert [b.endswith(b" a.") for b in bodies[:4]] == [True, True, False, False]
    assert [b.endswith(b" b.") for b in bodies[:4]] == [False, False, True, True]
    assert answers[4].startswith(b"HTTP/1.1 404")
    assert bodies[5:7] == [b"other b.", b"other b."]
    assert bodies[7].endswith(b" 8 /id  a.")


def test_keepalive_requests_ends_a_connection_of_repeated_requests() -> None:
    port = free_port()
    request = b"GET /id HTTP/1.1\r\nHost: x\r\n\r\n"
    with running_upsync(config(port, "keepalive_requests 3;"), port):
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.settimeout(5)
            heads = [a.partition(b"\r\n\r\n")[0] for a in one_by_one(c, [request] * 3)]
            assert c.recv(65536) == b""  # closed after the third
    assert [b"Connection: close" in head for head in heads] == [False, False, True]


def test_invalid_header_names_are_dropped_from_every_repeat() -> None:
    def echo(req: RawRequest) -> tuple[bytes, bool]:
        return ok_response(req.head.split(b"\r\n", 1)[1]), True

    port = free_port()
    request = b"GET /up HTTP/1.1\r\nHost: x\r\nX_Bad: 1\r\nX-A: a\r\n\r\n"
    with ScriptedBackend(echo) as backend:
        conf = config(port, backend_port=backend.port)
        with running_upsync(conf, port), socket.create_connection(("127.0.0.1", port)) as c:
            c.settimeout(5)
            bodies = [body_of(answer) for answer in one_by_one(c, [request] * 4)]
    assert backend.connections == 1
    for n, body in enumerate(bodies, 1):
        lines = body.split(b"\r\n")
        assert b"X-A: a" in lines and not any(line.startswith(b"X_Bad") for line in lines)
        assert f"X-Count: {n}".encode() in lines  # the upstream head is made per request


def test_pipelined_and_split_repeats_are_parsed_and_answered_in_order() -> None:
    port = free_port()
    request = b"GET /id HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\r\n"
    with running_upsync(config(port), port), socket.create_connection(("127.0.0.1", port)) as c:
        c.settimeout(5)
        c.sendall(request)
        first = read_answers(c, 1)
        c.sendall(request)  # the same bytes alone: a repeat
        second = read_answers(c, 1)
        c.sendall(request * 3)  # three in one read
        piped = read_answers(c, 3)
        c.sendall(request[:10])  # cut: the first part is not the request
        c.sendall(request[10:])
        cut = read_answers(c, 1)
        c.sendall(request)
        last = read_answers(c, 1)
    counts = [body_of(a).split(b" ")[1] for a in first + second + piped + cut + last]
    assert counts == [b"%d" % n for n in range(1, 8)]


def test_a_client_that_turned_lenient_is_parsed_each_time() -> None:
    """A request line ending in a bare LF makes the connection lenient; its reads are then
    searched for bare CRs and parsed, repeats included."""
    port = free_port()
    request = b"GET /id HTTP/1.1\nHost: x\nX-A: a\n\n"
    with running_upsync(config(port), port), socket.create_connection(("127.0.0.1", port)) as c:
        c.settimeout(5)
        bodies = [body_of(answer) for answer in one_by_one(c, [request] * 3)]
        c.sendall(b"GET /id HTTP/1.1\r\nHost: x\rX-A: a\r\n\r\n")  # a bare CR: refused
        refused = c.recv(65536)
    assert [body.split(b" ", 1)[1] for body in bodies] == [b"%d /id  a." % n for n in (1, 2, 3)]
    assert refused.startswith(b"HTTP/1.1 400")


def test_http10_keep_alive_repeats_and_a_last_request() -> None:
    port = free_port()
    keep = b"GET /id HTTP/1.0\r\nConnection: keep-alive\r\nHost: x\r\n\r\n"
    last = b"GET /id HTTP/1.0\r\nHost: x\r\n\r\n"
    with running_upsync(config(port), port), socket.create_connection(("127.0.0.1", port)) as c:
        c.settimeout(5)
        answers = one_by_one(c, [keep] * 3 + [last])
        assert c.recv(65536) == b""
    assert [b"Connection: keep-alive" in a for a in answers] == [True, True, True, False]
    assert [body_of(a).split(b" ")[1] for a in answers] == [b"1", b"2", b"3", b"4"]


def test_repeated_requests_with_a_body_carry_it_each_time() -> None:
    port = free_port()
    posts = [
        b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ]
    with ScriptedBackend(lambda req: (ok_response(b"ok"), True)) as backend:
        conf = config(port, backend_port=backend.port)
        with running_upsync(conf, port), socket.create_connection(("127.0.0.1", port)) as c:
            c.settimeout(5)
            sends = [post for post in posts for _ in range(3)]
            bodies = [body_of(answer) for answer in one_by_one(c, sends)]
    assert bodies == [b"ok"] * 6
    assert [r.body for r in backend.requests] == [b"hello"] * 6  # each request's own body
