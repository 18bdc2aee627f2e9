"""The training run of the profile-guided build (setup.py).

The instrumented hot path, just compiled into BUILD_LIB, proxies a typical mix of requests: small
GETs on keep-alive connections, a request per new connection, small POSTs, a chunked response.
GCC then learns which branches run and lays the code that runs per request out together, apart
from the error paths; a smaller per-request code footprint is what upsync's speed beside a bare
relay depends on (see the README's Benchmarks).

Standard library only, loopback only: the backend and the load are in this process, upsync runs
as a child with BUILD_LIB first on its path. It exits non-zero when a request does not get the
expected answer or upsync does not exit cleanly (its profile is written at exit); setup.py then
builds without a profile.

    python scripts/pgo_training.py BUILD_LIB     (with no argument: the installed upsync)
"""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# below keepalive_requests' 1000, after which upsync closes a client's connection
KEEPALIVE_CONNECTIONS = 20
REQUESTS_PER_CONNECTION = 900
POSTS_PER_CONNECTION = 50
NEW_CONNECTIONS = 1500
START_TIMEOUT = 60.0
EXIT_TIMEOUT = 30.0

BODY = b"hello from the backend\n"
CHUNKED_BODY = b"17\r\nhello from the backend\n\r\n0\r\n\r\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proxy_config(port: int, backend: int) -> str:
    # the shape of the benchmark's configuration and of the README's first example
    return f"""
events {{ worker_connections 1024; }}
http {{
    access_log off;
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def backend_answer(head: bytes) -> bytes:
    """An nginx-shaped response; a target naming "chunked" gets its body chunked."""
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()).encode()
    common = b"Server: backend\r\nDate: " + date + b"\r\nContent-Type: text/plain\r\n"
    if b"chunked" in head.split(b"\r\n", 1)[0]:
        return (
            b"HTTP/1.1 200 OK\r\n" + common + b"Transfer-Encoding: chunked\r\n"
            b"Connection: keep-alive\r\n\r\n" + CHUNKED_BODY
        )
    return (
        b"HTTP/1.1 200 OK\r\n" + common + b"Content-Length: %d\r\n" % len(BODY)
        + b"Connection: keep-alive\r\n\r\n" + BODY
    )


async def serve_backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":", 1)[1]))
            writer.write(backend_answer(head))
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass  # the proxy closed the connection, or the training is over
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"unexpected answer: {head[:60]!r}")
    lowered = head.lower()
    if b"transfer-encoding: chunked" in lowered:
        return await reader.readuntil(b"0\r\n\r\n")
    length = int(lowered.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
    return await reader.readexactly(length)


def get(target: str, close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return (
        b"GET " + target.encode() + b" HTTP/1.1\r\nHost: training\r\nUser-Agent: pgo\r\n"
        b"Accept: */*\r\n" + connection + b"\r\n"
    )


POST = (
    b"POST /form HTTP/1.1\r\nHost: training\r\nContent-Type: application/x-www-form-urlencoded"
    b"\r\nContent-Length: 11\r\n\r\nname=upsync"
)


async def keepalive_client(port: int, nth: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in range(REQUESTS_PER_CONNECTION):
            target = "/chunked" if i % 50 == 0 else f"/item/{nth}?page={i % 7}"
            writer.write(get(target))
            await read_response(reader)
        for _ in range(POSTS_PER_CONNECTION):
            writer.write(POST)
            await read_response(reader)
    finally:
        writer.close()


async def new_connection_client(port: int, count: int) -> None:
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/", close=True))
        if await read_response(reader) != BODY:
            raise RuntimeError("unexpected body")
        writer.close()


async def wait_for_port(port: int, proxy: "subprocess.Popen[bytes]") -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if proxy.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("upsync did not start") from None
            await asyncio.sleep(0.1)


async def train(build_lib: str | None) -> None:
    server = await asyncio.start_server(serve_backend, "127.0.0.1", 0)
    backend = server.sockets[0].getsockname()[1]
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "upsync.conf").write_text(proxy_config(port, backend))
        env = dict(os.environ)
        if build_lib is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [build_lib, env.get("PYTHONPATH")]))
        proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "upsync",
                "-c",
                str(workdir / "upsync.conf"),
                "-g",
                # one process: the profile is written by the process that ran the requests
                f"pid {workdir}/upsync.pid; error_log {workdir}/error.log; master_process off;",
            ],
            cwd=workdir,
            env=env,
        )
        try:
            await wait_for_port(port, proxy)
            await asyncio.gather(
                *(keepalive_client(port, n) for n in range(KEEPALIVE_CONNECTIONS)),
                new_connection_client(port, NEW_CONNECTIONS),
            )
        finally:
            proxy.send_signal(signal.SIGTERM)
            try:
                code = proxy.wait(EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                proxy.kill()
                raise
            server.close()
        if code != 0:
            log = (workdir / "error.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"upsync exited with {code}:\n{log}")


def main() -> int:
    build_lib = sys.argv[1] if len(sys.argv) > 1 else None
    started = time.monotonic()
    try:
        asyncio.run(train(build_lib))
    except Exception as error:
        print(f"upsync: profile training failed: {error}", file=sys.stderr)
        return 1
    print(f"upsync: profile training ran in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
