"""Throughput and latency of upsync against nginx, same config, same backend, one worker each;
in the same table, the bare relay of bench/relay.py (the ceiling for Python on this stack) and
the proxies a user would pick instead: HAProxy and Caddy (Debian's, one thread each, configs
bench/haproxy.cfg and bench/Caddyfile; left out when not installed).

wrk drives each proxy in alternating rounds; the backend is Debian's nginx answering
`return 200`. The proxy under test is pinned to one CPU and wrk plus the backend to the other,
so each proxy gets one core. Prints requests/s, p50 and p99 latency and the ratios to nginx.

    make bench                      # or: .venv/bin/python bench/proxy_bench.py --rounds 3

--unique-heads has the backend put a new id in every response head (upsync then gains nothing
from the response heads it learns; see docs/ARCHITECTURE.md).
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    """argv run on one CPU (None: wherever the kernel puts it)."""
    if cpu is not None and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def proxy_config(port: int, backend_port: int, workers: int = 1, upstream: str = "") -> str:
    upstream = upstream or f"server 127.0.0.1:{backend_port};"
    return f"""
worker_processes {workers};
events {{ worker_connections 4096; }}
http {{
    access_log off;
    upstream backend {{
        {upstream}
        keepalive 64;
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


def backend_config(*ports: int, unique_heads: bool = False) -> str:
    """`unique_heads`: a new X-Id in every response head, so none repeats the one before."""
    listens = " ".join(f"listen 127.0.0.1:{port};" for port in ports)
    unique = "add_header X-Id $request_id; " if unique_heads else ""
    return f"""
worker_processes 1;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000;
    server {{ {listens} location / {{ {unique}return 200 "hello from the backend\\n"; }} }}
}}
"""


def start_nginx(
    workdir: Path, name: str, text: str, cpu: int | None, master: bool = False
) -> subprocess.Popen[bytes]:
    """nginx in the foreground; `master`: with its master process (needed for more than one
    worker and for reloads as users run them)."""
    conf = workdir / f"{name}.conf"
    conf.write_text(text)
    process = "" if master else "master_process off; "
    argv = [
        NGINX,
        "-p",
        str(workdir),
        "-c",
        str(conf),
        "-g",
        f"daemon off; {process}pid {workdir}/{name}.pid; error_log {workdir}/{name}.err;",
    ]
    return subprocess.Popen(pinned(cpu, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def compiled_relay(workdir: Path) -> Path:
    """A directory holding bench/relay.py, compiled by mypyc (as upsync's hot path is) when it
    can be; bench/instructions.py --relay counts the same build."""
    build = workdir / "relay"
    build.mkdir()
    shutil.copy(ROOT / "bench" / "relay.py", build / "relay.py")
    mypyc = Path(sys.executable).with_name("mypyc")
    if mypyc.exists():
        subprocess.run([str(mypyc), "relay.py"], cwd=build, capture_output=True, check=False)
    return build


def start_relay(workdir: Path, port: int, backend: int, cpu: int | None) -> subprocess.Popen[bytes]:
    build = compiled_relay(workdir)
    argv = [sys.executable, "-c", "import relay; relay.main()", str(port), str(backend)]
    return subprocess.Popen(
        pinned(cpu, argv), cwd=build, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def relay_compiled(workdir: Path) -> bool:
    return any((workdir / "relay").glob("relay*.so"))


def start_haproxy(
    workdir: Path, port: int, backend: int, cpu: int | None
) -> subprocess.Popen[bytes] | None:
    binary = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
    )
    if binary is None:
        return None
    conf = workdir / "haproxy.cfg"
    text = (ROOT / "bench" / "haproxy.cfg").read_text()
    conf.write_text(text.replace("BACKEND", str(backend)).replace("PORT", str(port)))
    return subprocess.Popen(
        pinned(cpu, [binary, "-f", str(conf)]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def start_caddy(
    workdir: Path, port: int, backend: int, cpu: int | None
) -> subprocess.Popen[bytes] | None:
    binary = shutil.which("caddy")
    if binary is None:
        return None
    conf = workdir / "Caddyfile"
    text = (ROOT / "bench" / "Caddyfile").read_text()
    conf.write_text(text.replace("BACKEND", str(backend)).replace("PORT", str(port)))
    env = {
        **os.environ,
        "GOMAXPROCS": "1",
        "XDG_DATA_HOME": str(workdir),
        "XDG_CONFIG_HOME": str(workdir),
    }
    argv = [binary, "run", "--config", str(conf), "--adapter", "caddyfile"]
    return subprocess.Popen(
        pinned(cpu, argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def start_upsync(workdir: Path, text: str, cpu: int | None) -> subprocess.Popen[bytes]:
    conf = workdir / "upsync.conf"
    conf.write_text(text)
    argv = [
        sys.executable,
        "-m",
        "upsync",
        "-c",
        str(conf),
        "-g",
        f"pid {workdir}/upsync.pid; error_log {workdir}/upsync.err;",
    ]
    return subprocess.Popen(pinned(cpu, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    failed: int = 0  # non-2xx answers and socket errors


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency(text: str, label: str) -> float:
    match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    if match is None:
        raise SystemExit(f"wrk printed no {label} latency:\n{text}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def failed_requests(out: str) -> int:
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(n) for n in errors.groups()) if errors else 0
    )


def run_wrk(
    port: int, seconds: int, connections: int, close: bool, cpu: int | None, quiet: bool = False
) -> Result:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{port}/")
    out = subprocess.run(pinned(cpu, argv), capture_output=True, text=True, check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise SystemExit(f"wrk printed no Requests/sec:\n{out}")
    failed = failed_requests(out)
    if failed and not quiet:
        print(f"  note: wrk reported errors:\n{out}", file=sys.stderr)
    return Result(float(rps.group(1)), _latency(out, "50%"), _latency(out, "99%"), failed)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--only", nargs="*", default=None, help="servers to measure beside nginx (default: all)"
    )
    parser.add_argument(
        "--unique-heads",
        action="store_true",
        help="the backend puts a new id in every response head: no head repeats the one before",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: make bench installs it (apt-get install wrk)")
    proxy_cpu, load_cpu = 1, 0
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "logs").mkdir()
        backend_port = free_port()
        ports = {name: free_port() for name in ("nginx", "upsync", "relay", "haproxy", "caddy")}
        wanted = set(args.only) if args.only is not None else set(ports)
        processes = [
            start_nginx(
                workdir, "backend", backend_config(backend_port, unique_heads=args.unique_heads), load_cpu
            ),
            start_nginx(workdir, "proxy", proxy_config(ports["nginx"], backend_port), proxy_cpu),
        ]
        starters = {
            "upsync": lambda port: start_upsync(
                workdir, proxy_config(port, backend_port), proxy_cpu
            ),
            "relay": lambda port: start_relay(workdir, port, backend_port, proxy_cpu),
            "haproxy": lambda port: start_haproxy(workdir, port, backend_port, proxy_cpu),
            "caddy": lambda port: start_caddy(workdir, port, backend_port, proxy_cpu),
        }
        servers = {"nginx": ports["nginx"]}
        for name, start in starters.items():
            if name in wanted:
                process = start(ports[name])
                if process is not None:
                    processes.append(process)
                    servers[name] = ports[name]
        try:
            wait_port(backend_port)
            for name, port in list(servers.items()):
                try:
                    wait_port(port, timeout=60)
                except SystemExit:
                    if name in ("nginx", "upsync"):
                        raise
                    print(f"note: {name} did not start: left out", file=sys.stderr)
                    del servers[name]
            if "relay" in servers and not relay_compiled(workdir):
                print("note: mypyc could not compile bench/relay.py: the relay runs interpreted")
            rows = []
            for mode, close in (("keep-alive", False), ("new connection", True)):
                samples: dict[str, list[Result]] = {name: [] for name in servers}
                for port in servers.values():  # warm-up
                    run_wrk(port, 1, args.connections, close, load_cpu, quiet=True)
                for _ in range(args.rounds):
                    for name, port in servers.items():
                        samples[name].append(
                            run_wrk(port, args.seconds, args.connections, close, load_cpu)
                        )
                rows.append((mode, samples))
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
    print(
        f"\nwrk -t1 -c{args.connections} -d{args.seconds}s, {args.rounds} alternating rounds, medians;"
        f" proxies pinned to CPU {proxy_cpu}, wrk and backend to CPU {load_cpu}\n"
    )
    print("| mode | server | requests/s | p50 ms | p99 ms | requests/s to nginx | p99 to nginx |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for mode, samples in rows:
        medians = {
            name: Result(
                statistics.median(r.rps for r in results),
                statistics.median(r.p50_ms for r in results),
                statistics.median(r.p99_ms for r in results),
            )
            for name, results in samples.items()
        }
        base = medians["nginx"]
        for name, m in medians.items():
            print(
                f"| {mode} | {name} | {m.rps:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} "
                f"| {m.rps / base.rps:.2f} | {m.p99_ms / base.p99_ms:.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
