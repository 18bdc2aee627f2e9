"""The addresses upsync listens and connects on: unix: sockets for `listen`, an upstream
`server` and `proxy_pass`, as nginx writes them; proxy_bind's own address upstream."""

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import free_port, request, running_upsync
from tests.integration.test_request_buffering import listener, read_until


class UnixBackend(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@contextmanager
def unix_backend(path: Path, name: bytes) -> Iterator[list[bytes]]:
    """An HTTP/1.0 backend on a unix socket answering `name` and the request line; it
    records each request head it reads."""
    heads: list[bytes] = []

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = self.rfile.readline()
                if not line:
                    return
                head += line
            heads.append(head)
            body = name + b" " + head.split(b"\r\n", 1)[0]
            self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    server = UnixBackend(str(path), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield heads
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def unix_get(path: Path, target: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_listen_server_and_proxy_pass_on_unix_sockets(tmp_path: Path) -> None:
    port = free_port()
    upstream_sock, front_sock = tmp_path / "up.sock", tmp_path / "front.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(front_sock))
    stale.close()  # a socket file an earlier run left, nobody listening: replaced
    text = f"""
events {{}}
http {{
    log_format addr "$remote_addr $server_addr $proxy_host";
    upstream u {{ server unix:{upstream_sock} weight=2; }}
    server {{
        listen 127.0.0.1:{port};
        listen unix:{front_sock};
        access_log {tmp_path}/access.log addr;
        location /u {{ proxy_pass http://u; }}
        location /direct/ {{ proxy_pass http://unix:{upstream_sock}:/inner/; }}
        location /show {{ upstream_show; }}
    }}
}}
"""
    with unix_backend(upstream_sock, b"unix") as heads, running_upsync(text, port):
        status, _, body = request(port, "/u/x")
        assert (status, body) == (200, b"unix GET /u/x HTTP/1.0")
        assert b"Host: u\r\n" in heads[-1]
        status, _, body = request(port, "/direct/y?q=1")
        assert (status, body) == (200, b"unix GET /inner/y?q=1 HTTP/1.0")
        assert b"Host: localhost\r\n" in heads[-1]  # $proxy_host of a unix socket, as nginx
        reply = unix_get(front_sock, "/u/through-unix")
        assert reply.startswith(b"HTTP/1.1 200 OK")
        assert reply.endswith(b"unix GET /u/through-unix HTTP/1.0")
        assert f"server unix:{upstream_sock} weight=2".encode() in request(port, "/show")[2]
    log = (tmp_path / "access.log").read_text().splitlines()
    assert log == ["127.0.0.1 127.0.0.1 u", "127.0.0.1 127.0.0.1 localhost", "unix: unix: u", "127.0.0.1 127.0.0.1 -"]


def test_a_unix_socket_someone_listens_on_is_not_taken_over(tmp_path: Path) -> None:
    from tests.helpers import Process, upsync_argv

    taken = tmp_path / "taken.sock"
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    holder.bind(str(taken))
    holder.listen(1)
    config = tmp_path / "upsync.conf"
    config.write_text(
        f"events {{}}\nhttp {{ server {{ listen unix:{taken}; location / {{ return 200; }} }} }}\n"
    )
    try:
        process = Process(upsync_argv(config), 0, tmp_path, "upsync").start(wait=False)
        assert process.proc is not None
        assert process.proc.wait(10) != 0
        assert "in use" in process.output()
        process.stop()
    finally:
        holder.close()


def test_proxy_bind_sets_the_upstream_connections_own_address() -> None:
    """proxy_bind ADDRESS[:PORT] [transparent] | off, inherited, with variables; an empty
    value binds nothing."""
    port = free_port()
    with listener() as upstream:
        up = upstream.getsockname()[1]
        text = f"""
events {{}}
http {{
    server {{
        listen 127.0.0.1:{port};
        proxy_bind 127.0.0.2;
        location /inherit {{ proxy_pass http://127.0.0.1:{up}; }}
        location /off {{ proxy_bind off; proxy_pass http://127.0.0.1:{up}; }}
        location /var {{ proxy_bind $arg_b; proxy_pass http://127.0.0.1:{up}; }}
        location /port {{ proxy_bind 127.0.0.3:$arg_p; proxy_pass http://127.0.0.1:{up}; }}
        location /transparent {{ proxy_bind 127.0.0.4 transparent; proxy_pass http://127.0.0.1:{up}; }}
    }}
}}
"""
        local_port = free_port()
        cases = [
            ("/inherit", ("127.0.0.2", None)),
            ("/off", ("127.0.0.1", None)),
            ("/var?b=127.0.0.5", ("127.0.0.5", None)),
            ("/var?b=", ("127.0.0.1", None)),
            (f"/port?p={local_port}", ("127.0.0.3", local_port)),
            ("/transparent", ("127.0.0.4", None)),
        ]
        with running_upsync(text, port):
            for target, (address, wanted_port) in cases:
                with socket.create_connection(("127.0.0.1", port)) as client:
                    client.settimeout(5)
                    client.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                    backend, peer = upstream.accept()
                    with backend:
                        backend.settimeout(5)
                        read_until(backend, b"\r\n\r\n")
                        backend.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    assert read_until(client, b"ok").startswith(b"HTTP/1.1 200")
                assert peer[0] == address, target
                if wanted_port is not None:
                    assert peer[1] == wanted_port
