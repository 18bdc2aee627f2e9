"""proxy_request_buffering and client_body_in_file_only: when a request body goes upstream,
and where it waits meanwhile, as nginx-tests' proxy_request_buffering*.t check them."""

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Backend, free_port, running_upsync, wait_until


def config(port: int, upstream: int, extra: str = "", version: str = "1.0") -> str:
    return f"""
events {{}}
http {{
    server {{
        listen 127.0.0.1:{port};
        proxy_http_version {version};
        location / {{ proxy_pass http://127.0.0.1:{upstream}; {extra} }}
        location /error_page {{
            proxy_pass http://127.0.0.1:{upstream}/status/404;
            proxy_intercept_errors on;
            error_page 404 /echo;
            {extra}
        }}
        location = /echo {{ return 200 "[$request_body]"; }}
        location /file {{
            proxy_pass http://127.0.0.1:{upstream}/echo;
            add_header X-Body-File $request_body_file;
            {extra}
        }}
    }}
}}
"""


@contextlib.contextmanager
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(5)
    try:
        yield sock
    finally:
        sock.close()


def read_until(sock: socket.socket, wanted: bytes) -> bytes:
    data = b""
    while not data.endswith(wanted):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def test_unbuffered_body_reaches_the_upstream_part_by_part_on_a_kept_alive_connection() -> None:
    port = free_port()
    with listener() as upstream:
        text = config(port, upstream.getsockname()[1], "proxy_request_buffering off;")
        with running_upsync(text, port), socket.create_connection(("127.0.0.1", port)) as client:
            client.settimeout(5)
            for round_ in range(2):  # the same client connection, a second request after the first
                client.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
                backend, _ = upstream.accept()
                with backend:
                    backend.settimeout(5)
                    # the head and what came with it, before the client sent the rest
                    first = read_until(backend, b"01234")
                    assert first.startswith(b"POST /up HTTP/1.0\r\n")
                    assert b"Content-Length: 10\r\n" in first
                    client.sendall(b"56789")
                    assert read_until(backend, b"56789") == b"56789"
                    backend.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok" + bytes([48 + round_]))
                answer = read_until(client, b"ok" + bytes([48 + round_]))
                assert answer.startswith(b"HTTP/1.1 200 OK")


def test_unbuffered_chunked_body_goes_as_chunks_each_read_one_chunk() -> None:
    port = free_port()
    with listener() as upstream:
        text = config(port, upstream.getsockname()[1], "proxy_request_buffering off;", "1.1")
        with running_upsync(text, port), socket.create_connection(("127.0.0.1", port)) as client:
            client.settimeout(5)
            client.sendall(
                b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n5\r\n01234\r\n"
            )
            backend, _ = upstream.accept()
            with backend:
                backend.settimeout(5)
                head = read_until(backend, b"5\r\n01234\r\n")
                assert b"Transfer-Encoding: chunked\r\n" in head
                # two chunks and the end in one read: one chunk, then the terminator, together
                client.sendall(b"2\r\n56\r\n3\r\n789\r\n0\r\n\r\n")
                assert read_until(backend, b"0\r\n\r\n") == b"5\r\n56789\r\n0\r\n\r\n"
                backend.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            assert read_until(client, b"ok").startswith(b"HTTP/1.1 200 OK")


def test_buffered_body_is_read_whole_before_the_upstream_hears_of_it() -> None:
    port = free_port()
    with listener() as upstream:
        text = config(port, upstream.getsockname()[1])
        with running_upsync(text, port), socket.create_connection(("127.0.0.1", port)) as client:
            client.settimeout(5)
            client.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234")
            upstream.settimeout(0.3)
            with pytest.raises(TimeoutError):
                upstream.accept()  # nothing goes upstream while the body is incomplete
            upstream.settimeout(5)
            client.sendall(b"56789")
            backend, _ = upstream.accept()
            with backend:
                backend.settimeout(5)
                assert read_until(backend, b"0123456789").endswith(b"\r\n\r\n0123456789")
                backend.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            assert read_until(client, b"ok").startswith(b"HTTP/1.1 200 OK")


def test_an_error_page_request_carries_a_body_that_was_read_whole() -> None:
    port = free_port()
    with Backend("a") as backend:
        for extra in ("", "proxy_request_buffering off;"):
            with running_upsync(config(port, backend.port, extra), port):
                with socket.create_connection(("127.0.0.1", port)) as client:
                    client.settimeout(5)
                    client.sendall(
                        b"POST /error_page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                        b"Content-Length: 10\r\n\r\n0123456789"
                    )
                    answer = read_until(client, b"]")
                assert answer.startswith(b"HTTP/1.1 404"), answer
                assert answer.endswith(b"\r\n\r\n[0123456789]"), (extra, answer)


def body_file_of(port: int) -> Path:
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.settimeout(5)
        client.sendall(
            b"POST /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: 10\r\n\r\n0123456789"
        )
        answer = read_until(client, b"0123456789")  # the backend echoes the body
    assert answer.startswith(b"HTTP/1.1 200"), answer
    head = answer.split(b"\r\n\r\n")[0].decode()
    (line,) = [h for h in head.split("\r\n") if h.lower().startswith("x-body-file:")]
    return Path(line.split(":", 1)[1].strip())


def test_client_body_in_file_only_keeps_or_cleans_the_named_file() -> None:
    port = free_port()
    with Backend("echo") as backend:
        text = config(port, backend.port, "client_body_in_file_only on;")
        with running_upsync(text, port) as proc:
            kept = body_file_of(port)
            assert kept.is_relative_to(proc.workdir)
            assert kept.read_bytes() == b"0123456789"  # `on`: left for whoever reads it
        text = config(port, backend.port, "client_body_in_file_only clean;")
        with running_upsync(text, port):
            cleaned = body_file_of(port)
            assert str(cleaned).startswith("/")
            wait_until(lambda: not os.path.exists(cleaned))

