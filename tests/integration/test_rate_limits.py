"""limit_rate, limit_rate_after, $limit_rate and proxy_limit_rate: a response goes no faster
than its rate, and a pooled upstream connection serves on after a limited response."""

import time
from pathlib import Path

from tests.helpers import Backend, KeepAliveClient, free_port, request, running_upsync

SIZE = 40_000
RATE = 20_000  # nginx sends the first second's worth at once: ~1 s for SIZE


def config(port: int, root: Path, backend: int) -> str:
    return f"""
events {{}}
http {{
    upstream pooled {{ server 127.0.0.1:{backend}; keepalive 2; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /file {{ limit_rate {RATE}; }}
        location /after {{ limit_rate {RATE}; limit_rate_after {SIZE}; alias {root}/file; }}
        location /var {{ set $limit_rate $arg_l; add_header X-Rate $limit_rate; alias {root}/file; }}
        location /up/ {{
            proxy_limit_rate {RATE};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://pooled/;
        }}
        location /client/ {{ limit_rate {RATE}; proxy_pass http://pooled/; }}
    }}
}}
"""


def timed(port: int, path: str) -> tuple[float, int, dict[str, str], bytes]:
    started = time.monotonic()
    status, headers, body = request(port, path)
    return time.monotonic() - started, status, headers, body


def test_responses_go_no_faster_than_their_rate(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x" * SIZE)
    port = free_port()
    with Backend("a") as backend, running_upsync(config(port, tmp_path, backend.port), port):
        elapsed, status, _, body = timed(port, "/file")
        assert (status, len(body)) == (200, SIZE) and elapsed >= 0.9
        for path in (f"/up/big/{SIZE}", f"/client/big/{SIZE}"):
            elapsed, status, _, body = timed(port, path)
            assert (status, len(body)) == (200, SIZE) and elapsed >= 0.9, path
        # the limit starts after limit_rate_after bytes; $limit_rate set to nothing: none
        assert timed(port, "/after")[0] < 0.9
        elapsed, status, headers, _ = timed(port, "/var?l=20k")
        assert headers["x-rate"] == "20480" and elapsed >= 0.9
        assert timed(port, "/var")[2]["x-rate"] == "0"


def test_a_pooled_connection_serves_on_after_a_limited_response(tmp_path: Path) -> None:
    port = free_port()
    with Backend("a") as backend, running_upsync(config(port, tmp_path, backend.port), port):
        client = KeepAliveClient(port)
        for _ in range(3):  # the same upstream connection each time, read again after a hold
            status, _, body = client.get(f"/up/big/{SIZE}")
            assert (status, len(body)) == (200, SIZE)
        client.close()
        assert backend.connections == 1
