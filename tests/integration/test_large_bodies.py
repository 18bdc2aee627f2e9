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

        def body() -> Iterator[bytes]:
            block = b"y" * (1 << 20)
            for _ in range(SIZE // len(block)):
                yield block

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("PUT", "/slowsink", body=body(), headers={"Content-Length": str(SIZE)})
        response = conn.getresponse()
        assert response.status == 200
        assert int(response.read()) == SIZE
        conn.close()
        assert proc.peak_rss_kb() - baseline < BOUND_KB
