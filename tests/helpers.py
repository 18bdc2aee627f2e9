"""Shared test tools: free ports, processes started and always stopped, real backends."""

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll until the condition holds; a condition that reads a file not there yet is false."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )


class Process:
    """A server process started for one test and stopped (and reaped) at the end."""

    def __init__(self, argv: list[str], port: int, workdir: Path, name: str) -> None:
        self.argv = argv
        self.port = port
        self.workdir = workdir
        self.name = name
        self.log_path = workdir / f"{name}.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True, ready: Callable[[], bool] | None = None) -> "Process":
        """Start; with `wait`, return once the port accepts and `ready()` holds (a master
        binds before its workers serve)."""
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        if wait:
            wait_until(
                lambda: (
                    (port_open(self.port) and (ready is None or ready()))
                    or self.proc is None
                    or self.proc.poll() is not None
                )
            )
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.output()}")
        return self

    def serving_pids(self) -> list[int]:
        """The processes that serve: upsync's workers (the master's grandchildren, through
        its spawner), or the process itself when it has no children (`master_process off`)."""
        assert self.proc is not None
        children = child_pids(self.proc.pid)
        if not children:
            return [self.proc.pid]
        return [worker for child in children for worker in child_pids(child)]

    def peak_rss_kb(self) -> int:
        """The largest peak resident memory so far (VmHWM) of the serving processes."""
        peaks = []
        for pid in self.serving_pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]))
        assert peaks, "no serving process"
        return max(peaks)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if hasattr(self, "log"):
            self.log.close()


def child_pids(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def upsync_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "upsync", "-c", str(config)]


@contextlib.contextmanager
def running_upsync(
    config_text: str, port: int, extra: list[str] | None = None
) -> Iterator[Process]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        config = workdir / "upsync.conf"
        config.write_text(config_text)
        argv = (
            upsync_argv(config)
            + ["-g", f"pid {workdir}/upsync.pid; error_log {workdir}/error.log info;"]
            + (extra or [])
        )
        process = Process(argv, port, workdir, "upsync")

        def serving() -> bool:
            # logged once every worker serves (or, in one process, once it listens)
            log = workdir / "error.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            return "upsync started" in text or "upsync started" in process.output()

        try:
            yield process.start(ready=serving)
        finally:
            process.stop()


@contextlib.contextmanager
def running_nginx(config_text: str, port: int) -> Iterator[Process]:
    binary = nginx_binary()
    assert binary is not None, "nginx is not installed (make test installs it)"
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "logs").mkdir()
        config = workdir / "nginx.conf"
        config.write_text(config_text)
        argv = [
            binary,
            "-p",
            str(workdir),
            "-c",
            str(config),
            "-g",
            f"daemon off; master_process off; pid {workdir}/nginx.pid; error_log {workdir}/error.log info;",
        ]
        process = Process(argv, port, workdir, "nginx")
        try:
            yield process.start()
        finally:
            process.stop()


def request(
    port: int,
    path: str = "/",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


class Backend:
    """A real HTTP backend in a thread. Behaviour by path:
    /status/NNN answers NNN; /slow/SECONDS waits first; /close drops the connection;
    anything else answers 200 with the backend's name. Every request is recorded."""

    def __init__(
        self, name: str, port: int | None = None, delay: float = 0.0, status: int = 200
    ) -> None:
        self.name = name
        self.delay = delay
        self.status = status
        self.port = port or free_port()
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.connections = 0  # accepted so far
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes

            def log_message(self, format: str, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                backend.connections += 1

            def _handle(self) -> None:
                if self.path.startswith("/big/"):
                    self._stream_out(int(self.path.split("/")[2]))
                    return
                if self.path.startswith("/slowsink"):
                    self._slow_sink(int(self.headers.get("Content-Length") or 0))
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = self._read_chunked()
                backend.requests.append((self.command, self.path, dict(self.headers.items()), body))
                if self.path.startswith("/close"):
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status = backend.status
                if backend.delay:
                    time.sleep(backend.delay)
                if self.path.startswith("/status/"):
                    status = int(self.path.split("/")[2])
                if self.path.startswith("/slow/"):
                    time.sleep(float(self.path.split("/")[2]))
                payload = f"{backend.name}\n".encode()
                if self.path.startswith("/echo"):
                    payload = body
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("X-Backend", backend.name)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _stream_out(self, size: int) -> None:
                """A large body produced as it is sent, never held whole."""
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                block = b"x" * 65536
                while size > 0:
                    self.wfile.write(block[: min(size, len(block))])
                    size -= len(block)

            def _slow_sink(self, size: int) -> None:
                """Reads a large body slowly, so the sender must be held back."""
                received = 0
                while received < size:
                    chunk = self.rfile.read(min(1 << 20, size - received))
                    if not chunk:
                        break
                    received += len(chunk)
                    time.sleep(0.01)
                payload = str(received).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _read_chunked(self) -> bytes:
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the proxy gave up on us: expected in timeouts

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Backend":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class UpgradeBackend:
    """A raw backend that answers an Upgrade request with 101 and then echoes bytes back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.head = b""

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            self.head, _, rest = data.partition(b"\r\n\r\n")
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            )
            if rest:
                conn.sendall(rest)
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                conn.sendall(chunk)

    def __enter__(self) -> "UpgradeBackend":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self.thread.join(5)


class BlackHole:
    """A port that accepts no connection: its accept queue is full, so a SYN goes unanswered
    and connect() hangs, as for a server that is down behind a firewall."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = int(self.listener.getsockname()[1])
        self.filler = socket.create_connection(("127.0.0.1", self.port))

    def __enter__(self) -> "BlackHole":
        return self

    def __exit__(self, *exc: object) -> None:
        self.filler.close()
        self.listener.close()


class RawRequest:
    """One request as a raw backend read it: head bytes, body bytes, and which connection."""

    def __init__(self, head: bytes, body: bytes, connection: int) -> None:
        self.head = head
        self.body = body
        self.connection = connection
        first = head.split(b"\r\n", 1)[0].split(b" ")
        self.method = first[0].decode()
        self.path = first[1].decode() if len(first) > 1 else ""

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None


# what a scripted backend does with a request: bytes to send, or None to close at once; the
# flag says whether it reads the request's body first (False: answer before the body is read)
Reply = tuple[bytes | None, bool]


class ScriptedBackend:
    """A raw-socket backend that answers each request with exactly the bytes a test scripts,
    so tests can play a misbehaving server; a reply that says `Connection: close` is followed
    by closing. Every request and connection is recorded."""

    def __init__(self, reply: Callable[[RawRequest], Reply]) -> None:
        self.reply = reply
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.requests: list[RawRequest] = []
        self.connections = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.open: list[socket.socket] = []

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.open.append(conn)
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        pending = b""
        try:
            while True:
                while b"\r\n\r\n" not in pending:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    pending += chunk
                head, _, pending = pending.partition(b"\r\n\r\n")
                req = RawRequest(head, b"", number)
                data, read_body = self.reply(req)
                if read_body:
                    length = int(req.header("content-length") or 0)
                    while len(pending) < length:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        pending += chunk
                    req.body, pending = pending[:length], pending[length:]
                self.requests.append(req)
                if data is None:
                    return
                conn.sendall(data)
                if b"\r\nconnection: close\r\n" in data.partition(b"\r\n\r\n")[0].lower() + b"\r\n":
                    return  # as it said: the connection ends the response
        except OSError:
            return
        finally:
            conn.close()

    def __enter__(self) -> "ScriptedBackend":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.listener.close()
        for conn in self.open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.thread.join(5)


def ok_response(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


class KeepAliveClient:
    """One client connection that sends requests and reads exactly one response each, the way
    a browser reuses a connection: what it reads next shows any desync."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def get(
        self,
        path: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        self.conn.request(method, path, body=body, headers=headers or {})
        response = self.conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def close(self) -> None:
        self.conn.close()


def keepalive_proxy_config(
    backend_port: int, port: int, location: str = "", server: str = ""
) -> str:
    """upsync in front of one backend with pooled HTTP/1.1 upstream connections, nginx's recipe."""
    return f"""
events {{}}
http {{
    upstream backend {{ server 127.0.0.1:{backend_port} max_fails=1; keepalive 8; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            {location}
        }}
        {server}
    }}
}}
"""


def show_json(
    conn: http.client.HTTPConnection, path: str = "/upstream_list?test&format=json"
) -> dict[str, object]:
    """upstream_show's JSON, asked on a connection that stays open."""
    conn.request("GET", path)
    response = conn.getresponse()
    assert response.status == 200
    answer: dict[str, object] = json.loads(response.read())
    return answer


@contextlib.contextmanager
def connection_per_worker(
    port: int, count: int, path: str = "/upstream_list?test&format=json"
) -> Iterator[dict[int, http.client.HTTPConnection]]:
    """Keep-alive connections until each of `count` workers holds one (the kernel hands new
    connections to whichever worker accepts first)."""
    held: dict[int, http.client.HTTPConnection] = {}
    spare: list[http.client.HTTPConnection] = []
    try:
        deadline = time.monotonic() + 20
        while len(held) < count:
            assert time.monotonic() < deadline, f"only workers {sorted(held)} answered"
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            pid = int(str(show_json(conn, path)["worker"]))
            if pid in held:
                spare.append(conn)  # held open, so the next connection may go elsewhere
            else:
                held[pid] = conn
        yield held
    finally:
        for conn in [*held.values(), *spare]:
            conn.close()
