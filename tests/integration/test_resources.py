"""Limits on what one client or one upstream can take: worker_connections, file descriptors."""

import contextlib
import socket

from tests.helpers import Backend, free_port, request, running_upsync, wait_until


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_worker_connections_is_enforced_closing_idle_connections_first() -> None:
    port = free_port()
    with Backend("a") as backend:
        text = f"""
events {{ worker_connections 8; }}
http {{
    upstream backend {{ server 127.0.0.1:{backend.port}; }}
    server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://backend; }} }}
}}
"""
        with running_upsync(text, port) as proc, contextlib.ExitStack() as stack:
            idle = [
                stack.enter_context(socket.create_connection(("127.0.0.1", port)))
                for _ in range(40)
            ]
            # 40 silent connections with room for 8: the oldest idle ones were closed
            wait_until(lambda: sum(not closed_by_server(s) for s in idle) <= 8)
            assert request(port, "/")[0] == 200  # room is made for a new one
            # connections in the middle of a request are not idle: a new one is refused
            busy = [
                stack.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(8)
            ]
            for sock in busy:
                sock.sendall(b"GET / HTTP/1.1\r\n")  # an unfinished head
            wait_until(lambda: all(closed_by_server(s) for s in idle))
            refused = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
            refused.settimeout(5)
            answer = b""
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                refused.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = refused.recv(100)
            assert answer == b""  # closed unanswered
            assert not any(closed_by_server(s) for s in busy)
            wait_until(
                lambda: (
                    "8 worker_connections are not enough"
                    in (proc.workdir / "error.log").read_text()
                )
            )


def test_running_out_of_descriptors_is_not_blamed_on_the_upstream() -> None:
    port = free_port()
    with Backend("a") as backend:
        text = f"""
worker_rlimit_nofile 64;
events {{ worker_connections 1000; }}
http {{
    upstream backend {{ server 127.0.0.1:{backend.port} max_fails=1 fail_timeout=60s; }}
    server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://backend; }} }}
}}
"""
        with running_upsync(text, port) as proc, contextlib.ExitStack() as stack:
            # idle client connections until upsync has no descriptor left: the next one it
            # accepts is closed at once
            held: list[socket.socket] = []
            while True:
                sock = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
                sock.settimeout(0.05)
                try:
                    if sock.recv(1) == b"":
                        break
                except TimeoutError:
                    held.append(sock)
                except ConnectionResetError:
                    break
                assert len(held) < 100, "upsync never ran out of descriptors"
            # a request on a connection it holds needs one more descriptor, for the upstream
            first = held[0]
            first.settimeout(5)
            first.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert first.recv(12) == b"HTTP/1.1 500"
            for sock in held:
                sock.close()
            log = (proc.workdir / "error.log").read_text()
            assert "socket() for" in log and "Too many open files" in log
            assert "temporarily disabled" not in log
            # once upsync has seen those connections go, the upstream serves again: well within
            # its fail_timeout of 60s, so it was never counted as failed

            def served() -> bool:
                try:
                    return request(port, "/", timeout=1)[0] == 200
                except OSError:
                    return False

            wait_until(served)
