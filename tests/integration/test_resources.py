"""Limits on what one client or one upstream can take: worker_connections, file descriptors."""

import contextlib
import socket
from pathlib import Path

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


LOW_DESCRIPTOR_LIMIT = """
worker_rlimit_nofile 80;
events {{ worker_connections 1000; }}
http {{
    upstream backend {{ server 127.0.0.1:{backend} max_fails=1 fail_timeout=60s; }}
    server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://backend; }} }}
}}
"""


def fill_until_paused(port: int, log: Path, stack: contextlib.ExitStack) -> list[socket.socket]:
    """Idle client connections until upsync stops accepting near its descriptor limit."""
    held: list[socket.socket] = []
    for _ in range(20):  # batches of 8 connections, each given time to be accepted
        for _ in range(8):
            held.append(stack.enter_context(socket.create_connection(("127.0.0.1", port))))
        with contextlib.suppress(AssertionError):
            wait_until(lambda: "accept() paused" in log.read_text(), timeout=0.5)
            return held
    raise AssertionError("upsync never paused accepting")


def test_accepting_pauses_near_the_descriptor_limit_and_nobody_is_dropped() -> None:
    port = free_port()
    with Backend("a") as backend:
        text = LOW_DESCRIPTOR_LIMIT.format(backend=backend.port, port=port)
        with running_upsync(text, port) as proc, contextlib.ExitStack() as stack:
            log = proc.workdir / "error.log"
            held = fill_until_paused(port, log, stack)
            # a client that connects now waits in the kernel's queue, not refused or reset
            waiting = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
            waiting.settimeout(10)
            waiting.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            for sock in held[:20]:
                sock.close()  # room again: accepting resumes and the waiting one is served
            assert waiting.recv(12) == b"HTTP/1.1 200"


def test_running_out_of_descriptors_is_not_blamed_on_the_upstream() -> None:
    port = free_port()
    with Backend("slow", delay=1.0) as backend:
        text = LOW_DESCRIPTOR_LIMIT.format(backend=backend.port, port=port)
        with running_upsync(text, port) as proc, contextlib.ExitStack() as stack:
            log = proc.workdir / "error.log"
            held = fill_until_paused(port, log, stack)
            # every held connection asks at once: more upstream connections than descriptors
            for sock in held:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            statuses = []
            for sock in held:
                sock.settimeout(10)
                statuses.append(sock.recv(12))
                sock.close()
            assert b"HTTP/1.1 500" in statuses and b"HTTP/1.1 502" not in statuses
            text_log = log.read_text()
            assert "socket() for" in text_log and "Too many open files" in text_log
            assert "temporarily disabled" not in text_log

            # once upsync has seen those connections go, the upstream serves again: well
            # within its fail_timeout of 60s, so it was never counted as failed
            def served() -> bool:
                try:
                    return request(port, "/", timeout=3)[0] == 200
                except OSError:
                    return False

            wait_until(served)
