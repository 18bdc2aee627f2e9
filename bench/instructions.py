"""CPU instructions per proxied request, counted by valgrind's callgrind: repeatable where
wall-clock benchmarks on a shared VM are not, so it tells whether a hot-path change helped.

upsync runs under callgrind in front of a Debian nginx backend; N requests go through it, on 10
keep-alive connections or each on a new connection; the count for N=1000 is subtracted from the count for N=3000, which leaves
the cost of 2000 requests without start-up. Needs valgrind (Debian package `valgrind`).

--relay counts bench/relay.py (compiled by mypyc, as make bench runs it) the same way: the
floor of this stack. --unique-heads has the backend add a new id to each response head, the
case where no upstream head repeats the one before (see upstream_conn.KnownHead). --cache adds callgrind's cache simulation: instruction-cache (I1) and
data-cache (D1) misses per request, where the relay's whole per-request code fits the
instruction cache and a larger program's does not.

    .venv/bin/python bench/instructions.py [--relay] [--cache] [--unique-heads]
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proxy_bench import compiled_relay, free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\n\r\n"
CLOSE_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: wrk\r\nConnection: close\r\n\r\n"
BODY = b"hello from the backend\n"


def proxy_argv(workdir: Path, proxy: int, backend: int, relay: Path | None) -> list[str]:
    if relay is not None:
        run = f"import sys; sys.path.insert(0, {str(relay)!r}); import relay; relay.main()"
        return [sys.executable, "-c", run, str(proxy), str(backend)]
    return [
        sys.executable,
        "-m",
        "upsync",
        "-c",
        str(workdir / "proxy.conf"),
        "-g",
        # one process: callgrind follows the process it starts, and a worker runs the
        # same code per request as the single process does
        f"pid {workdir}/u.pid; error_log {workdir}/u.err; master_process off;",
    ]


def count(
    requests: int,
    workdir: Path,
    close: bool,
    relay: Path | None = None,
    cache: bool = False,
    unique_heads: bool = False,
) -> list[int]:
    """callgrind's totals: instructions, then (with `cache`) the cache simulation's events
    (Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw). `unique_heads`: the backend adds a new id to each
    response head, so no head repeats the one before."""
    backend, proxy = free_port(), free_port()
    (workdir / "logs").mkdir(exist_ok=True)
    unique = "add_header X-Id $request_id; " if unique_heads else ""
    (workdir / "backend.conf").write_text(
        f'events {{}} http {{ access_log off; keepalive_requests 100000; server {{ listen 127.0.0.1:{backend}; location / {{ {unique}return 200 "{BODY.decode().strip()}\\n"; }} }} }}'
    )
    (workdir / "proxy.conf").write_text(
        f"events {{}} http {{ access_log off; upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }} "
        f'server {{ listen 127.0.0.1:{proxy}; location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}'
    )
    nginx = subprocess.Popen(
        [
            NGINX,
            "-p",
            str(workdir),
            "-c",
            str(workdir / "backend.conf"),
            "-g",
            f"daemon off; master_process off; pid {workdir}/b.pid; error_log {workdir}/b.err;",
        ]
    )
    out = workdir / f"callgrind.{requests}"
    simulate = ["--cache-sim=yes"] if cache else []
    upsync = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            *simulate,
            f"--callgrind-out-file={out}",
            *proxy_argv(workdir, proxy, backend, relay),
        ],
        env={**os.environ, "PYTHONHASHSEED": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", proxy), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("upsync did not start under valgrind") from None
                time.sleep(0.2)
        if close:
            for _ in range(requests):
                with socket.create_connection(("127.0.0.1", proxy)) as conn:
                    conn.sendall(CLOSE_REQUEST)
                    while conn.recv(4096):
                        pass
        else:
            connections = [socket.create_connection(("127.0.0.1", proxy)) for _ in range(10)]
            for _ in range(requests // len(connections)):
                for conn in connections:
                    conn.sendall(REQUEST)
                for conn in connections:
                    data = b""
                    while not data.endswith(BODY):
                        data += conn.recv(4096)
            for conn in connections:
                conn.close()
    finally:
        upsync.send_signal(signal.SIGTERM)
        upsync.wait(120)
        nginx.terminate()
        nginx.wait(10)
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return [int(field) for field in line.split()[1:]]
    raise SystemExit("callgrind wrote no totals")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--relay", action="store_true", help="count bench/relay.py instead")
    parser.add_argument("--cache", action="store_true", help="also cache misses per request")
    parser.add_argument(
        "--unique-heads",
        action="store_true",
        help="a new X-Id in each backend response head: no head repeats (see KnownHead)",
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind): skipped")
        return 0
    name = "the relay" if args.relay else "upsync"
    for close, mode in ((False, "keep-alive request"), (True, "request on a new connection")):
        with tempfile.TemporaryDirectory() as tmp:
            relay = compiled_relay(Path(tmp)) if args.relay else None
            low = count(1000, Path(tmp), close, relay, args.cache, args.unique_heads)
            high = count(3000, Path(tmp), close, relay, args.cache, args.unique_heads)
        per = [(more - fewer) / 2000 for more, fewer in zip(high, low, strict=True)]
        line = f"{name}: instructions per proxied {mode}: {per[0]:,.0f}"
        if args.cache:
            # events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
            line += f"; I1 misses {per[3]:,.0f}, D1 misses {per[4] + per[5]:,.0f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
