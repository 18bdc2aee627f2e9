"""upsync as a process on free loopback ports, in front of real backends."""

import datetime
import socket
import struct
import threading
import time
from collections import Counter

from tests.helpers import (
    Backend,
    UpgradeBackend,
    free_port,
    raw_exchange,
    request,
    running_upsync,
    wait_until,
)


def config(port: int, upstream: str, location: str = "", http: str = "") -> str:
    return f"""
events {{ worker_connections 256; }}
http {{
    {http}
    upstream backend {{
        {upstream}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            {location}
        }}
        location = /upstream_show {{ upstream_show; }}
        location = /local {{ return 200 "local\\n"; }}
    }}
}}
"""


def names(port: int, count: int, path: str = "/") -> list[str]:
    out = []
    for _ in range(count):
        status, _, body = request(port, path)
        out.append(f"{status} {body.decode().strip()}")
    return out


def test_weighted_round_robin_across_backends() -> None:
    port = free_port()
    with Backend("a") as a, Backend("b") as b:
        upstream = f"server 127.0.0.1:{a.port} weight=2; server 127.0.0.1:{b.port};"
        with running_upsync(config(port, upstream), port):
            assert names(port, 6) == ["200 a", "200 b", "200 a"] * 2


def test_request_headers_reach_backend_like_nginx() -> None:
    port = free_port()
    with Backend("a") as a:
        location = """
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        """
        with running_upsync(config(port, f"server 127.0.0.1:{a.port};", location), port):
            status, headers, _ = request(
                port,
                "/path?q=1",
                headers={
                    "Host": "app.test",
                    "X-Forwarded-For": "10.9.9.9",
                    "Keep-Alive": "300",
                    "X-Custom": "yes",
                },
            )
            assert status == 200
            assert headers["server"].startswith("upsync")
            assert headers["x-backend"] == "a"
            method, path, sent, _ = a.requests[-1]
            assert (method, path) == ("GET", "/path?q=1")
            assert sent["Host"] == "app.test"
            assert sent["X-Real-IP"] == "127.0.0.1"
            assert sent["X-Forwarded-For"] == "10.9.9.9, 127.0.0.1"
            assert sent["X-Custom"] == "yes"
            assert "Keep-Alive" not in sent  # hop-by-hop
            assert sent["Connection"] == "close"  # nginx's default towards upstreams


def test_default_host_header_is_the_upstream_name() -> None:
    port = free_port()
    with Backend("a") as a, running_upsync(config(port, f"server 127.0.0.1:{a.port};"), port):
        request(port, "/", headers={"Host": "client.test"})
        assert a.requests[-1][2]["Host"] == "backend"


def test_proxy_pass_with_uri_replaces_location_prefix() -> None:
    port = free_port()
    with Backend("a") as a:
        text = f"""
events {{}}
http {{
    upstream backend {{ server 127.0.0.1:{a.port}; }}
    server {{
        listen 127.0.0.1:{port};
        location /api/ {{ proxy_pass http://backend/v2/; }}
        location / {{ proxy_pass http://127.0.0.1:{a.port}; }}
    }}
}}
"""
        with running_upsync(text, port):
            assert request(port, "/api/users?id=3")[0] == 200
            assert a.requests[-1][1] == "/v2/users?id=3"
            assert request(port, "/other/%7Ex")[0] == 200
            assert a.requests[-1][1] == "/other/%7Ex"  # no URI part: passed unchanged


def test_dead_peer_is_retried_then_taken_out() -> None:
    port = free_port()
    # bound and not listening for the whole test: connections are refused, and no backend
    # started meanwhile can be given the same port
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))
    dead = reserved.getsockname()[1]
    with reserved, Backend("a") as a:
        upstream = (
            f"server 127.0.0.1:{dead} max_fails=1 fail_timeout=30s; server 127.0.0.1:{a.port};"
        )
        with running_upsync(config(port, upstream), port) as proc:
            assert names(port, 4) == ["200 a"] * 4
            status, _, body = request(port, "/upstream_show?format=json")
            assert status == 200
            assert b'"fails": 1' in body
            assert "connect() to 127.0.0.1" in (proc.workdir / "error.log").read_text()


def test_all_peers_down_answers_502_page() -> None:
    port = free_port()
    upstream = f"server 127.0.0.1:{free_port()}; server 127.0.0.1:{free_port()};"
    with running_upsync(config(port, upstream), port):
        status, headers, body = request(port, "/")
        assert status == 502
        assert headers["content-type"] == "text/html"
        assert b"<center><h1>502 Bad Gateway</h1></center>" in body
        # a later request is still answered (the worker is fine)
        assert request(port, "/local")[0] == 200


def test_backup_serves_only_when_primaries_are_down() -> None:
    port = free_port()
    with Backend("primary") as primary, Backend("backup") as backup:
        upstream = f"server 127.0.0.1:{primary.port}; server 127.0.0.1:{backup.port} backup;"
        with running_upsync(config(port, upstream), port):
            assert set(names(port, 4)) == {"200 primary"}
    port = free_port()
    with Backend("backup") as backup:
        upstream = f"server 127.0.0.1:{free_port()}; server 127.0.0.1:{backup.port} backup;"
        with running_upsync(config(port, upstream), port):
            assert set(names(port, 3)) == {"200 backup"}


def test_read_timeout_answers_504_and_retries_next_peer() -> None:
    port = free_port()
    with Backend("slow", delay=2.0) as slow, Backend("fast") as fast:
        upstream = f"server 127.0.0.1:{slow.port}; server 127.0.0.1:{fast.port};"
        with running_upsync(config(port, upstream, "proxy_read_timeout 300ms;"), port):
            # the slow peer times out and the request moves to the fast one
            assert names(port, 2) == ["200 fast", "200 fast"]
    port = free_port()
    with Backend("slow", delay=2.0) as slow:
        upstream = f"server 127.0.0.1:{slow.port};"
        with running_upsync(config(port, upstream, "proxy_read_timeout 300ms;"), port):
            started = time.monotonic()
            assert request(port, "/")[0] == 504
            assert time.monotonic() - started < 1.5


def test_non_idempotent_request_is_not_retried_after_it_was_sent() -> None:
    port = free_port()
    with Backend("a") as a, Backend("b") as b:
        upstream = f"server 127.0.0.1:{a.port} max_fails=0; server 127.0.0.1:{b.port} max_fails=0;"
        with running_upsync(config(port, upstream), port):
            assert request(port, "/close", method="POST", body=b"x")[0] == 502
            assert len(a.requests) + len(b.requests) == 1
            status, _, _ = request(port, "/close")  # GET: tried on both peers
            assert status == 502
            assert len(a.requests) + len(b.requests) == 3


def test_next_upstream_on_http_500_when_configured() -> None:
    port = free_port()
    with Backend("bad", status=500) as bad, Backend("good") as good:
        upstream = f"server 127.0.0.1:{bad.port}; server 127.0.0.1:{good.port};"
        with running_upsync(
            config(port, upstream, "proxy_next_upstream error timeout http_500;"), port
        ):
            assert names(port, 3) == ["200 good"] * 3
    port = free_port()
    with Backend("bad", status=500) as bad:
        with running_upsync(config(port, f"server 127.0.0.1:{bad.port};"), port):
            assert names(port, 1) == ["500 bad"]  # not configured: passed through


def test_keepalive_pool_reuses_upstream_connections() -> None:
    port = free_port()
    with Backend("a") as a:
        upstream = f"server 127.0.0.1:{a.port}; keepalive 4;"
        location = 'proxy_http_version 1.1; proxy_set_header Connection "";'
        with running_upsync(config(port, upstream, location), port):
            for _ in range(5):
                assert request(port, "/")[0] == 200
            assert all("Connection" not in headers for _, _, headers, _ in a.requests)


def test_client_keepalive_and_pipelining() -> None:
    port = free_port()
    with Backend("a") as a, running_upsync(config(port, f"server 127.0.0.1:{a.port};"), port):
        pipelined = (
            b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /local HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        reply = raw_exchange(port, pipelined)
        assert reply.count(b"HTTP/1.1 200 OK") == 3
        assert reply.index(b"a\n") < reply.index(b"local\n") < reply.rindex(b"a\n")
        assert [r[1] for r in a.requests] == ["/one", "/three"]


def test_pipelined_requests_keep_their_own_http_versions() -> None:
    """A 1.1 request and a 1.0 one in the same packet: the second is answered as 1.0 (no
    keep-alive unless asked, a chunked upstream body delimited by the close)."""
    port = free_port()
    with Backend("a") as a, running_upsync(config(port, f"server 127.0.0.1:{a.port};"), port):
        reply = raw_exchange(
            port, b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.0\r\nHost: x\r\n\r\n"
        )
        first, _, second = reply.partition(b"a\n")
        assert b"Connection: keep-alive" in first
        assert b"Connection: close" in second
        assert [r[1] for r in a.requests] == ["/one", "/two"]


def test_request_bodies_content_length_chunked_and_large() -> None:
    port = free_port()
    with Backend("a") as a:
        location = "client_max_body_size 0; proxy_http_version 1.1;"
        with running_upsync(config(port, f"server 127.0.0.1:{a.port};", location), port):
            assert request(port, "/echo", method="POST", body=b"hello")[2] == b"hello"
            chunked = (
                b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            reply = raw_exchange(port, chunked)
            assert reply.startswith(b"HTTP/1.1 200 OK")
            assert reply.endswith(b"hello world")
            big = bytes(range(256)) * 12_000  # about 3 MB: streamed, not buffered
            status, _, body = request(port, "/echo", method="PUT", body=big)
            assert status == 200 and body == big


def test_head_and_expect_continue() -> None:
    port = free_port()
    with Backend("a") as a, running_upsync(config(port, f"server 127.0.0.1:{a.port};"), port):
        status, headers, body = request(port, "/", method="HEAD")
        assert status == 200 and body == b"" and headers["content-length"] == "2"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            sock.sendall(b"data")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"data")


def test_websocket_upgrade_is_tunnelled() -> None:
    port = free_port()
    with UpgradeBackend() as backend:
        location = """
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
        """
        with running_upsync(config(port, f"server 127.0.0.1:{backend.port};", location), port):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(
                    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                )
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(4096)
                assert head.startswith(b"HTTP/1.1 101 Switching Protocols")
                assert b"Upgrade: websocket" in head
                # nginx's own Connection line, whatever the backend's says ("Upgrade" here)
                assert head.count(b"\r\nConnection:") == 1, head
                assert b"\r\nConnection: upgrade\r\n" in head, head
                sock.sendall(b"ping")
                echoed = b""
                while len(echoed) < 4:
                    echoed += sock.recv(4096)
                assert echoed == b"ping"
            assert b"Upgrade: websocket" in backend.head


def test_upstream_show_over_http() -> None:
    port = free_port()
    upstream = "server 127.0.0.1:8001 weight=1 max_fails=2 fail_timeout=10s; server 127.0.0.1:8002 weight=1 max_fails=2 fail_timeout=10s;"
    with running_upsync(config(port, upstream), port):
        status, headers, body = request(port, "/upstream_show?backend")
        assert status == 200
        assert body == (
            b"Upstream name: backend; Backend server count: 2\n"
            b"        server 127.0.0.1:8001 weight=1 max_fails=2 fail_timeout=10s;\n"
            b"        server 127.0.0.1:8002 weight=1 max_fails=2 fail_timeout=10s;\n\n"
        )
        assert request(port, "/upstream_show?missing")[0] == 404
        status, headers, body = request(
            port, "/upstream_show", headers={"Accept": "application/json"}
        )
        assert headers["content-type"] == "application/json" and b'"name": "backend"' in body


def test_access_rules_and_access_log() -> None:
    port = free_port()
    with Backend("a") as a:
        text = config(port, f"server 127.0.0.1:{a.port};", "deny 127.0.0.1; allow all;")
        with running_upsync(text.replace("events", "error_log stderr;\nevents"), port):
            assert request(port, "/")[0] == 403
            assert request(port, "/local")[0] == 200
            assert not a.requests


def test_distribution_counts_over_many_requests() -> None:
    port = free_port()
    with Backend("a") as a, Backend("b") as b, Backend("c") as c:
        upstream = f"server 127.0.0.1:{a.port} weight=5; server 127.0.0.1:{b.port}; server 127.0.0.1:{c.port};"
        with running_upsync(config(port, upstream), port):
            counts = Counter(names(port, 70))
            assert counts == {"200 a": 50, "200 b": 10, "200 c": 10}


def test_proxy_pass_with_host_variable_reaches_upstream_by_name() -> None:
    """The C module's own test config: `proxy_pass http://$host;` with Host naming an upstream."""
    port = free_port()
    with Backend("a") as a:
        text = f"""
events {{}}
http {{
    upstream test {{ server 127.0.0.1:{a.port}; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://$host; }}
    }}
}}
"""
        with running_upsync(text, port):
            status, _, body = request(port, "/x", headers={"Host": "test"})
            assert (status, body) == (200, b"a\n")
            assert a.requests[-1][2]["Host"] == "test"
            # a Host naming no upstream is never resolved or dialled
            assert request(port, "/x", headers={"Host": "example.com"})[0] == 502


def test_proxy_pass_with_variables_reaches_an_address_that_needs_no_resolving() -> None:
    """An IP address and port, as nginx connects to it without a resolver; a name is not."""
    port = free_port()
    with Backend("a") as a:
        text = f"""
events {{}}
http {{
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://$arg_b/t; }}
    }}
}}
"""
        with running_upsync(text, port):
            for _ in range(2):  # the second through the same one-server upstream
                assert request(port, f"/?b=127.0.0.1:{a.port}")[2] == b"a\n"
            assert a.requests[-1][1] == "/t"
            assert request(port, f"/?b=localhost:{a.port}")[0] == 502  # a name: not resolved
            assert request(port, "/?b=127.0.0.1:bad")[0] == 502


def test_proxy_pass_whose_variables_make_the_url_prefix_too() -> None:
    """nginx-tests' `proxy_pass http:/$uri`: the whole URL is computed per request and its
    prefix checked then (500 when it is not http://, as nginx)."""
    port = free_port()
    with Backend("a") as a:
        text = f"""
events {{}}
http {{
    upstream u_a {{ server 127.0.0.1:{a.port}; }}
    server {{
        listen 127.0.0.1:{port};
        location /u {{ proxy_pass http:/$uri; }}
        location /bad {{ proxy_pass $arg_scheme://u_a; }}
    }}
}}
"""
        with running_upsync(text, port):
            status, _, body = request(port, "/u_a")
            assert (status, body) == (200, b"a\n")
            assert a.requests[-1][1] == "/u_a"
            assert request(port, "/bad?scheme=http")[0] == 200
            assert request(port, "/bad?scheme=ftp")[0] == 500


def logging_config(port: int, backend: Backend) -> str:
    return config(port, f"server 127.0.0.1:{backend.port};").replace(
        "location = /local", "access_log logs/access.log combined;\n        location = /local"
    )


def test_access_log_in_combined_format() -> None:
    port = free_port()
    with Backend("a") as a:
        with running_upsync(logging_config(port, a), port) as proc:
            request(port, "/path?q=1", headers={"User-Agent": "tester/1.0", "Referer": "http://r/"})
            log_file = proc.workdir / "logs" / "access.log"
            wait_until(lambda: log_file.read_text().count("\n") == 1)
            line = log_file.read_text()
            assert line.startswith("127.0.0.1 - - [")
            assert '"GET /path?q=1 HTTP/1.1" 200 2 "http://r/" "tester/1.0"' in line


def test_access_log_times_follow_the_wall_clock() -> None:
    """$time_iso8601, $msec and $request_time: the request's start is the wall clock's time
    (read once a second and carried by the event loop's clock), a request of half a second
    takes about that long, and no time is negative."""
    port = free_port()
    with Backend("a") as a:
        text = config(
            port,
            f"server 127.0.0.1:{a.port};",
            http="log_format times '$time_iso8601 $msec $request_time $upstream_response_time';",
        ).replace("location = /local", "access_log logs/times.log times;\n        location = /local")
        with running_upsync(text, port) as proc:
            before = time.time()
            assert request(port, "/p")[0] == 200
            assert request(port, "/slow/0.5")[0] == 200
            after = time.time()
            log_file = proc.workdir / "logs" / "times.log"
            wait_until(lambda: log_file.exists() and log_file.read_text().count("\n") == 2)
            lines = [line.split() for line in log_file.read_text().splitlines()]
    for stamp, msec, taken, upstream in lines:
        started = datetime.datetime.fromisoformat(stamp).timestamp()
        assert int(before) <= started <= after, (stamp, before, after)
        assert before - 0.002 <= float(msec) <= after + 0.002
        assert float(taken) >= 0 and float(upstream) >= 0 and not taken.startswith("-")
    assert float(lines[0][2]) < 0.4
    assert 0.45 <= float(lines[1][2]) < 5, lines[1]


def test_a_request_after_pipelined_ones_and_a_pause_is_timed_from_its_own_read() -> None:
    """A request queued behind another (pipelined) is started by the upstream's read, not the
    client's: the time read then is not kept for the client's next read. After a pause longer
    than proxy_read_timeout, a request whose answer takes a fraction of it still gets it (with
    a stale time its read timeout would have passed at once: 504)."""
    port = free_port()
    with Backend("a") as a:
        text = config(
            port,
            f"server 127.0.0.1:{a.port}; keepalive 4;",
            'proxy_read_timeout 1s; proxy_http_version 1.1; proxy_set_header Connection "";',
        )
        with running_upsync(text, port):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                client.sendall(b"GET /p/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p/2 HTTP/1.1\r\nHost: x\r\n\r\n")
                answers = b""
                while answers.count(b"a\n") < 2:
                    chunk = client.recv(65536)
                    assert chunk, answers
                    answers += chunk
                assert answers.count(b"HTTP/1.1 200 OK") == 2, answers
                time.sleep(1.5)  # the pause under test: longer than proxy_read_timeout
                client.sendall(b"GET /slow/0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while not answer.endswith(b"a\n"):
                    chunk = client.recv(65536)
                    assert chunk, answer
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200 OK"), answer


def test_access_log_lines_go_to_every_log_of_the_level_when_their_condition_holds() -> None:
    port = free_port()
    with Backend("a") as a:
        text = config(
            port, f"server 127.0.0.1:{a.port};", http="log_format short $request_uri;"
        ).replace(
            "location = /local",
            "access_log logs/all.log short buffer=32k flush=1s;\n"
            "        access_log logs/some.log short if=$arg_log;\n"
            "        location = /local",
        )
        with running_upsync(text, port) as proc:
            for query in ("?log=1", "?log=0", "", "?log=yes"):
                assert request(port, "/p" + query)[0] == 200
            logs = proc.workdir / "logs"
            wait_until(lambda: (logs / "all.log").read_text().count("\n") == 4)
            wait_until(lambda: (logs / "some.log").read_text().count("\n") == 2)
            assert (logs / "some.log").read_text() == "/p?log=1\n/p?log=yes\n"


def test_access_log_names_a_client_that_reset_before_its_answer() -> None:
    """499: the line is written after the client's connection is gone, and still names it."""
    port = free_port()
    with Backend("a") as a:
        with running_upsync(logging_config(port, a), port) as proc:
            client = socket.create_connection(("127.0.0.1", port))
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.sendall(b"GET /slow/2 HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_until(lambda: any(r[1] == "/slow/2" for r in a.requests))
            client.close()  # SO_LINGER 0: a reset, not a goodbye
            log_file = proc.workdir / "logs" / "access.log"
            wait_until(lambda: log_file.exists() and log_file.read_text().count("\n") == 1)
            line = log_file.read_text()
            assert line.startswith("127.0.0.1 - - [")
            assert '"GET /slow/2 HTTP/1.1" 499 ' in line


def test_http10_client_gets_a_close_delimited_body_for_a_chunked_upstream() -> None:
    port = free_port()
    chunked_port = free_port()
    listener = socket.create_server(("127.0.0.1", chunked_port))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with running_upsync(config(port, f"server 127.0.0.1:{chunked_port};"), port):
            reply = raw_exchange(port, b"GET / HTTP/1.0\r\n\r\n")
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert b"Transfer-Encoding" not in head and b"Connection: close" in head
            assert body == b"hello"
    finally:
        listener.close()
        thread.join(5)


def test_connect_timeout_moves_on_or_answers_504() -> None:
    from tests.helpers import BlackHole

    port = free_port()
    with BlackHole() as hole, Backend("live") as live:
        upstream = f"server 127.0.0.1:{hole.port}; server 127.0.0.1:{live.port};"
        with running_upsync(config(port, upstream, "proxy_connect_timeout 200ms;"), port) as proc:
            started = time.monotonic()
            assert request(port, "/")[2] == b"live\n"
            assert time.monotonic() - started < 1.5
            assert "timed out while connecting" in (proc.workdir / "error.log").read_text()
    port = free_port()
    with BlackHole() as hole:
        with running_upsync(
            config(port, f"server 127.0.0.1:{hole.port};", "proxy_connect_timeout 200ms;"), port
        ):
            started = time.monotonic()
            assert request(port, "/")[0] == 504
            assert time.monotonic() - started < 1.5


def test_next_upstream_timeout_stops_retries() -> None:
    port = free_port()
    with Backend("slow", delay=1.0) as slow, Backend("fast") as fast:
        upstream = f"server 127.0.0.1:{slow.port}; server 127.0.0.1:{fast.port};"
        location = "proxy_read_timeout 300ms; proxy_next_upstream_timeout 100ms;"
        with running_upsync(config(port, upstream, location), port):
            assert request(port, "/")[0] == 504  # the time for retries ran out on the slow peer


def _raw_backend(reply: bytes) -> tuple[int, threading.Thread, socket.socket, list[bytes]]:
    """A backend that reads one request head (and body), sends `reply` and closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while len(rest) < length:
                rest += conn.recv(65536)
            received.append(head + b"\r\n\r\n" + rest)
            conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return int(listener.getsockname()[1]), thread, listener, received


def test_upstream_body_ending_at_close_reaches_http11_client_chunked() -> None:
    port = free_port()
    backend_port, thread, listener, _ = _raw_backend(
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close"
    )
    try:
        with running_upsync(config(port, f"server 127.0.0.1:{backend_port};"), port):
            status, headers, body = request(port, "/")
            assert (status, body) == (200, b"until close")
            assert headers["transfer-encoding"] == "chunked"
            assert request(port, "/local")[0] == 200
    finally:
        listener.close()
        thread.join(5)


def test_large_chunked_body_to_http10_upstream_is_sent_with_length() -> None:
    port = free_port()
    backend_port, thread, listener, received = _raw_backend(
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    try:
        text = config(port, f"server 127.0.0.1:{backend_port};", "client_max_body_size 10m;")
        with running_upsync(text, port):
            block = b"z" * 65536
            chunks = (
                b"".join(b"%x\r\n%s\r\n" % (len(block), block) for _ in range(40)) + b"0\r\n\r\n"
            )
            reply = raw_exchange(
                port,
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                + chunks,
            )
            assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"ok")
            sent = received[0]
            assert b"HTTP/1.0" in sent.split(b"\r\n")[0]
            assert (
                f"Content-Length: {40 * 65536}".encode() in sent
                and b"Transfer-Encoding" not in sent
            )
    finally:
        listener.close()
        thread.join(5)


def test_address_variables() -> None:
    port = free_port()
    text = f"""
events {{}}
http {{
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "$server_addr:$server_port $remote_addr $host $request_uri"; }}
    }}
}}
"""
    with running_upsync(text, port):
        body = request(port, "/a?b=1", headers={"Host": "Example.COM:99"})[2]
        assert body == f"127.0.0.1:{port} 127.0.0.1 example.com /a?b=1".encode()
