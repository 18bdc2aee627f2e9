"""Large bodies stream through with back-pressure: upsync's memory stays bounded whichever side
is slow."""

import http.client
import socket
import time
from collections.abc import Iterator

from tests.helpers import Backend, free_port, running_upsync

SIZE = 96 * 1024 * 1024
BOUND_KB = 40 * 1024  # far below the body: nothing is buffered whole


def config(port: int, backend: int) -> str:
    return f"""
events {{}}
http {{
    upstream backend {{ server 127.0.0.1:{backend}; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{ proxy_pass http://backend; proxy_http_version 1.1; }}
    }}
}}
"""


def upload(size: int, fill: bytes) -> Iterator[bytes]:
    """A body of `size` bytes made as it is sent, 1 MiB at a time, never held whole."""
    block = fill * (1 << 20)
    for _ in range(size // len(block)):
        yield block


def test_download_to_a_slow_client_runs_in_bounded_memory() -> None:
    port = free_port()
    with Backend("big") as backend, running_upsync(config(port, backend.port), port) as proc:
        baseline = proc.peak_rss_kb()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                f"GET /big/{SIZE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            received = 0
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
                if received < SIZE // 2:
                    time.sleep(0.002)  # a slow reader for the first half
        assert received > SIZE
        assert proc.peak_rss_kb() - baseline < BOUND_KB


def test_upload_to_a_slow_backend_runs_in_bounded_memory() -> None:
    port = free_port()
    with Backend("sink") as backend, running_upsync(config(port, backend.port), port) as proc:
        baseline = proc.peak_rss_kb()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request(
            "PUT", "/slowsink", body=upload(SIZE, b"y"), headers={"Content-Length": str(SIZE)}
        )
        response = conn.getresponse()
        assert response.status == 200
        assert int(response.read()) == SIZE
        conn.close()
        assert proc.peak_rss_kb() - baseline < BOUND_KB


def test_chunked_upload_to_an_http10_upstream_waits_on_disk_not_in_memory() -> None:
    port = free_port()
    # proxy_http_version 1.0 (nginx's default): a chunked body must be read whole before it
    # can go out with a Content-Length; it is kept in client_body_temp_path
    text = config(port, 0).replace(" proxy_http_version 1.1;", "")
    size = 48 * 1024 * 1024
    with Backend("sink") as backend:
        text = text.replace("127.0.0.1:0;", f"127.0.0.1:{backend.port};")
        with running_upsync(text, port) as proc:
            baseline = proc.peak_rss_kb()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("PUT", "/slowsink", body=upload(size, b"z"), encode_chunked=True)
            response = conn.getresponse()
            assert response.status == 200
            assert int(response.read()) == size
            conn.close()
            assert proc.peak_rss_kb() - baseline < 16 * 1024
            assert list((proc.workdir / "client_body_temp").iterdir()) == []


def test_unfinished_bodies_are_held_on_disk() -> None:
    port = free_port()
    with Backend("b") as backend, running_upsync(config(port, backend.port), port) as proc:
        baseline = proc.peak_rss_kb()
        sockets = []
        try:
            for _ in range(40):  # 40 uploads of 900 KB, each one byte short of its end
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 921601\r\n\r\n")
                sock.sendall(b"u" * 921_600)
                sockets.append(sock)
            # every byte has reached upsync when one more request on a new connection is served
            with socket.create_connection(("127.0.0.1", port)) as probe:
                probe.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert probe.recv(12) == b"HTTP/1.1 200"
            growth = proc.peak_rss_kb() - baseline
        finally:
            for sock in sockets:
                sock.close()
        assert growth < 12 * 1024  # 36 MB of bodies, a few MB of memory


def test_a_spooled_body_is_sent_again_whole_on_a_retry() -> None:
    port = free_port()
    dead = free_port()
    with Backend("b") as backend:
        text = f"""
events {{}}
http {{
    upstream backend {{ server 127.0.0.1:{dead}; server 127.0.0.1:{backend.port}; }}
    server {{
        listen 127.0.0.1:{port};
        client_body_buffer_size 4k;
        location / {{ proxy_pass http://backend; }}
    }}
}}
"""
        with running_upsync(text, port):
            payload = bytes(range(256)) * 800  # 200 KB, past the 4k kept in memory
            for _ in range(2):  # whichever server round robin asks first
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("POST", "/echo", body=payload)
                response = conn.getresponse()
                assert response.status == 200 and response.read() == payload
                conn.close()
