"""A connection remembers the previous message's header names by position (a name equal to the
one before is not looked up again): carried across requests on one keep-alive client
connection and across responses on one pooled upstream connection, with names that move,
change and repeat, every header is still passed or dropped by its own name."""

import socket
from collections.abc import Callable

from tests.helpers import (
    RawRequest,
    ScriptedBackend,
    free_port,
    keepalive_proxy_config,
    ok_response,
    running_upsync,
)


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_request_header_names_that_move_between_requests_keep_their_own_fate() -> None:
    def echo(req: RawRequest) -> tuple[bytes, bool]:
        return ok_response(b"ok"), True

    requests = [
        b"X-A: 1\r\nConnection: keep-alive\r\n",
        b"Connection: keep-alive\r\nX-A: 2\r\n",  # the two names swap places
        b"X-A: 3\r\nKeep-Alive: timeout=5\r\nX-B: b\r\n",  # a hop-by-hop name where X-A was
        b"Upgrade: x\r\nX-A: 4\r\n",
    ]
    port = free_port()
    with ScriptedBackend(echo) as backend, running_upsync(keepalive_proxy_config(backend.port, port), port):
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.settimeout(5)
            for headers in requests:
                client.sendall(b"GET /h HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
                assert read_response(client).startswith(b"HTTP/1.1 200")
    seen = [sorted(line.split(b":")[0].lower() for line in r.head.split(b"\r\n")[1:]) for r in backend.requests]
    assert seen == [
        [b"host", b"x-a"],
        [b"host", b"x-a"],
        [b"host", b"x-a", b"x-b"],
        [b"host", b"x-a"],
    ]
    assert [r.header("x-a") for r in backend.requests] == ["1", "2", "3", "4"]


def test_response_header_names_that_move_on_a_pooled_connection_keep_their_own_fate() -> None:
    responses = [
        b"X-Up: 1\r\nServer: backend\r\nContent-Type: a\r\n",
        b"Server: backend\r\nX-Up: 2\r\nContent-Type: a\r\n",  # swapped
        b"Content-Type: a\r\nContent-Type: b\r\nX-Up: 3\r\n",  # a repeat where Server was
        b"X-Accel-Expires: 5\r\nX-Up: 4\r\n",  # hidden by default, where Content-Type was
        b"X-Accel-Expires: 5\r\nX-Up: 5\r\n",  # the same names: lines remembered by value
        b"X-Accel-Expires: 5\r\nX-Down: 5\r\n",  # the same value under another name
    ]

    def scripted(req: RawRequest) -> tuple[bytes, bool]:
        return ok_response(b"ok", responses[int(req.path.rsplit("/", 1)[1])]), True

    port = free_port()
    heads = []
    with ScriptedBackend(scripted) as backend, running_upsync(keepalive_proxy_config(backend.port, port), port):
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.settimeout(5)
            for index in range(len(responses)):
                client.sendall(b"GET /r/%d HTTP/1.1\r\nHost: x\r\n\r\n" % index)
                heads.append(read_response(client).decode().lower())
    assert backend.connections == 1  # one pooled upstream connection carried all six
    for index, head in enumerate(heads):
        assert index == 5 or f"x-up: {index + 1}" in head
        assert "server: backend" not in head  # upsync's own Server stands
        assert "x-accel-expires" not in head
    assert heads[2].count("content-type:") == 1 and "content-type: a" in heads[2]
    assert "x-up: 5" in heads[4] and "x-down" not in heads[4]
    assert "x-down: 5" in heads[5] and "x-up" not in heads[5]


def test_request_header_lines_remembered_by_value_follow_each_change() -> None:
    """The upstream head takes a keep-alive client's header line as made last time when its
    name and value are the same at its place: every change of either is seen."""
    sends = [
        b"X-A: same\r\nX-B: 1\r\n",
        b"X-A: same\r\nX-B: 1\r\n",  # both lines as before
        b"X-A: other\r\nX-B: 1\r\n",  # a value changes
        b"X-C: other\r\nX-B: 1\r\n",  # a name changes, the value stays
        b"x-c: other\r\nX-B: 2\r\n",  # spelled otherwise
        b"X-B: 2\r\n",  # fewer
    ]
    port = free_port()
    with ScriptedBackend(lambda req: (ok_response(b"ok"), True)) as backend, running_upsync(
        keepalive_proxy_config(backend.port, port), port
    ):
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.settimeout(5)
            for headers in sends:
                client.sendall(b"GET /h HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
                assert read_response(client).startswith(b"HTTP/1.1 200")
    heads = [r.head.split(b"\r\n", 1)[1] for r in backend.requests]
    assert heads == [b"Host: backend\r\n" + headers.rstrip(b"\r\n") for headers in sends]


def two_servers(port: int) -> str:
    """a.test answers "a"; b.test, the default server, "b"."""
    return f"""
events {{}}
http {{
    server {{ listen 127.0.0.1:{port}; server_name a.test; return 200 "a"; }}
    server {{ listen 127.0.0.1:{port} default_server; server_name b.test; return 200 "b"; }}
}}
"""


def test_a_kept_alive_client_that_changes_its_host_reaches_each_server() -> None:
    """A connection remembers the server its previous Host chose: a Host that changes, goes and
    comes back on the same connection chooses by itself each time."""
    port = free_port()
    config = two_servers(port)
    hosts = [b"a.test", b"a.test", b"b.test", b"A.TEST", None, b"a.test", b"other"]
    with running_upsync(config, port), socket.create_connection(("127.0.0.1", port)) as client:
        client.settimeout(5)
        bodies = []
        for host in hosts:
            line = b"" if host is None else b"Host: " + host + b"\r\n"
            version = b"1.0" if host is None else b"1.1"
            client.sendall(b"GET / HTTP/%s\r\n%sConnection: keep-alive\r\n\r\n" % (version, line))
            answer = b""
            while not (b"\r\n\r\n" in answer and answer.endswith((b"a", b"b"))):
                answer += client.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200"), answer
            bodies.append(answer[-1:])
    assert bodies == [b"a", b"a", b"b", b"a", b"b", b"a", b"b"]


def test_a_kept_alive_client_that_moves_between_locations_reaches_each_upstream() -> None:
    """A connection keeps the plan of the location it last proxied to: a client that moves
    between locations, and back, on one connection reaches each location's upstream."""

    def named(name: str) -> Callable[[RawRequest], tuple[bytes, bool]]:
        return lambda req: (ok_response(name.encode()), True)

    port = free_port()
    with ScriptedBackend(named("a")) as a, ScriptedBackend(named("b")) as b:
        config = f"""
events {{}}
http {{
    upstream one {{ server 127.0.0.1:{a.port}; keepalive 4; }}
    upstream two {{ server 127.0.0.1:{b.port}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port};
        location /a/ {{ proxy_pass http://one; proxy_http_version 1.1; proxy_set_header Connection ""; }}
        location /b/ {{ proxy_pass http://two; proxy_http_version 1.1; proxy_set_header Connection ""; }}
        location /here {{ return 200 "here"; }}
    }}
}}
"""
        paths = ["/a/1", "/a/2", "/b/1", "/here", "/b/2", "/a/3"]
        bodies = []
        with running_upsync(config, port), socket.create_connection(("127.0.0.1", port)) as client:
            client.settimeout(5)
            for path in paths:
                client.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
                answer = b""
                while not (b"\r\n\r\n" in answer and answer.endswith((b"a", b"b", b"here"))):
                    answer += client.recv(65536)
                assert answer.startswith(b"HTTP/1.1 200"), answer
                bodies.append(answer.rpartition(b"\r\n\r\n")[2])
    assert bodies == [b"a", b"a", b"b", b"here", b"b", b"a"]


def test_a_kept_alive_client_that_repeats_and_changes_its_target_gets_each_uri_and_location() -> None:
    """A connection remembers its last target, the $uri and $args made of it and the location
    its server chose: targets that repeat, change, are spelled otherwise and come back, under
    a Host that changes, are each taken by themselves."""
    port = free_port()
    config = f"""
events {{}}
http {{
    server {{
        listen 127.0.0.1:{port}; server_name x.test;
        location /p/ {{ return 200 "x-p $uri $args."; }}
        location / {{ return 200 "x-root $uri $args."; }}
    }}
    server {{
        listen 127.0.0.1:{port}; server_name y.test;
        location /p/ {{ return 200 "y-p $uri $args."; }}
    }}
}}
"""
    asked = [
        (b"x.test", b"/p/q?a=1", b"x-p /p/q a=1."),
        (b"x.test", b"/p/q?a=1", b"x-p /p/q a=1."),
        (b"y.test", b"/p/q?a=1", b"y-p /p/q a=1."),
        (b"x.test", b"/p/q?a=1", b"x-p /p/q a=1."),
        (b"x.test", b"/p/%71", b"x-p /p/q ."),
        (b"x.test", b"/p//q/../r?b", b"x-p /p/r b."),
        (b"x.test", b"/p//q/../r?b", b"x-p /p/r b."),
        (b"x.test", b"/p/q?a=2", b"x-p /p/q a=2."),
        (b"x.test", b"/q?a=2", b"x-root /q a=2."),
        (b"x.test", b"/p/q?a=1", b"x-p /p/q a=1."),
        (b"x.test", b"/p/../../q", None),
        (b"x.test", b"/p/q?a=1", b"x-p /p/q a=1."),
    ]
    with running_upsync(config, port):
        client = socket.create_connection(("127.0.0.1", port))
        client.settimeout(5)
        try:
            for host, target, body in asked:
                client.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host))
                answer = b""
                while not answer.endswith(b".") and not answer.endswith(b"</html>\r\n"):
                    chunk = client.recv(65536)
                    assert chunk, answer
                    answer += chunk
                if body is None:  # above the root: 400, and the connection is closed
                    assert answer.startswith(b"HTTP/1.1 400"), answer
                    client.close()
                    client = socket.create_connection(("127.0.0.1", port))
                    client.settimeout(5)
                    continue
                assert answer.startswith(b"HTTP/1.1 200"), answer
                assert answer.rpartition(b"\r\n\r\n")[2] == body, (target, answer)
        finally:
            client.close()


def test_host_headers_remembered_across_connections_choose_their_own_server() -> None:
    """A worker remembers the host each Host header sent names (new connections repeat them):
    on a fresh connection each time, a Host that repeats, changes case, carries a port or a
    trailing dot still chooses its own server, and an invalid one is refused every time."""
    port = free_port()
    config = two_servers(port)
    asked = [
        (b"a.test", b"a"),
        (b"a.test", b"a"),
        (b"b.test", b"b"),
        (b"A.TEST", b"a"),
        (b"a.test:8080", b"a"),
        (b"a.test.", b"a"),
        (b"a/test", None),
        (b"a/test", None),
        (b"other", b"b"),
        (b"a.test", b"a"),
    ]
    with running_upsync(config, port):
        for host, body in asked:
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.settimeout(5)
                client.sendall(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host)
                answer = b""
                while chunk := client.recv(65536):
                    answer += chunk
            if body is None:
                assert answer.startswith(b"HTTP/1.1 400"), (host, answer)
            else:
                assert answer.startswith(b"HTTP/1.1 200"), (host, answer)
                assert answer.endswith(b"\r\n\r\n" + body), (host, answer)
