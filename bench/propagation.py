"""How fast a registry change reaches routing: from the registry write returning to the first
request routed by the new list, p50/p99 over many changes, for etcd v2, etcd v3 and Consul (the
test suite's API double, or a real agent given CONSUL_HTTP_ADDR).

Each change flips server B between `down` and up in the registry (one write); B coming back is
observed as the first response from B, polled on a keep-alive connection held to each worker
(the master follows the registry and passes each list on, so every worker is timed).
upsync_interval is 30s so that only the watch, not polling, can explain the figures. A and B are
one nginx, so a poll costs what the proxy costs (a Python backend made each poll ~1.7 ms on a
slow machine: the figures were mostly the poll).

    .venv/bin/python bench/propagation.py [--changes 400] [--registry etcdv3]
"""

import argparse
import http.client
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import proxy_bench as pb  # noqa: E402

from tests.consul_double import ConsulDouble  # noqa: E402
from tests.helpers import (  # noqa: E402
    connection_per_worker,
    free_port,
    running_upsync,
    wait_until,
)
from tests.registries import (  # noqa: E402
    ConsulKVDriver,
    Driver,
    Etcd,
    EtcdV2Driver,
    EtcdV3Driver,
    consul_address_from_env,
)


def measure(driver: Driver, changes: int, workers: int) -> dict[int, list[float]]:
    """Per worker pid, the delay of each change until that worker routes by it."""
    port, a, b = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        backends = pb.start_nginx(Path(tmp), "backends", answering({a: "A", b: "B"}), None)
        try:
            pb.wait_port(a)
            pb.wait_port(b)
            return _measure(driver, changes, workers, port, a, b, tmp)
        finally:
            backends.terminate()
            backends.wait(10)
            driver.delete_all()


def answering(bodies: dict[int, str]) -> str:
    servers = "".join(
        f'server {{ listen 127.0.0.1:{port}; location / {{ return 200 "{body}\\n"; }} }}\n'
        for port, body in bodies.items()
    )
    return f"""
worker_processes 1;
events {{}}
http {{ access_log off; keepalive_requests 1000000; {servers} }}
"""


def _measure(
    driver: Driver, changes: int, workers: int, port: int, a: int, b: int, tmp: str
) -> dict[int, list[float]]:
    driver.put(f"127.0.0.1:{a}")
    driver.put(f"127.0.0.1:{b}", '{"down":1}')
    line = driver.upsync().replace("upsync_interval=100ms", "upsync_interval=30s")
    config = f"""
worker_processes {workers};
events {{}}
http {{
    upstream test {{ {line} upsync_dump_path {tmp}/dump.conf; }}
    keepalive_requests 1000000;  # each polled connection stays with its worker for the run
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://test; }}
        location /upstream_list {{ upstream_show; }}
    }}
}}
"""
    with running_upsync(config, port), connection_per_worker(port, workers) as conns:

        def backend(conn: http.client.HTTPConnection) -> bytes:
            """The answering backend's body. Written and read on the socket: http.client's
            request and response objects doubled what a poll costs."""
            assert conn.sock is not None
            conn.sock.sendall(b"GET / HTTP/1.1\r\nHost: p\r\n\r\n")
            answer = b""
            while True:
                head, found, body = answer.partition(b"\r\n\r\n")
                if found:
                    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                    assert length is not None, head
                    if len(body) >= int(length[1]):
                        return body
                chunk = conn.sock.recv(4096)
                if not chunk:
                    raise SystemExit("upsync closed a polled connection")
                answer += chunk

        for conn in conns.values():
            wait_until(lambda conn=conn: backend(conn) == b"A\n")
        delays: dict[int, list[float]] = {pid: [] for pid in conns}
        for change in range(changes):
            if change % 2 == 0:
                driver.put(f"127.0.0.1:{b}", "{}")  # B up: time until B answers
                written = time.perf_counter()
                deadline = written + 5
                waiting = dict(conns)
                while waiting:  # each worker polled in turn until it routes to B
                    for pid, conn in list(waiting.items()):
                        if backend(conn) == b"B\n":
                            delays[pid].append((time.perf_counter() - written) * 1000)
                            del waiting[pid]
                    if time.perf_counter() > deadline:
                        raise SystemExit("a change did not arrive within 5 s")
            else:
                driver.put(f"127.0.0.1:{b}", '{"down":1}')
                for conn in conns.values():
                    wait_until(
                        lambda conn=conn: all(backend(conn) == b"A\n" for _ in range(3)),
                        timeout=5,
                        interval=0.001,
                    )
    return delays


def percentiles(delays: list[float]) -> tuple[float, float, float]:
    ordered = sorted(delays)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99, ordered[-1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=400)
    parser.add_argument("--registry", choices=["etcd", "etcdv3", "consul", "all"], default="all")
    parser.add_argument("--workers", type=int, default=2, help="worker_processes")
    args = parser.parse_args()
    kinds = ["etcd", "etcdv3", "consul"] if args.registry == "all" else [args.registry]
    etcd = Etcd().start() if {"etcd", "etcdv3"} & set(kinds) else None
    consul_real = consul_address_from_env()
    double = ConsulDouble().start() if "consul" in kinds and not consul_real else None
    rows = []
    try:
        for kind in kinds:
            driver: Driver
            if kind == "etcd":
                assert etcd is not None
                driver = EtcdV2Driver(etcd, "bench/propagation")
            elif kind == "etcdv3":
                assert etcd is not None
                driver = EtcdV3Driver(etcd, "bench/propagation")
            else:
                driver = ConsulKVDriver(consul_real or double.address, "bench/propagation")  # type: ignore[union-attr]
            per_worker = measure(driver, args.changes, args.workers)
            for index, delays in enumerate(per_worker.values(), 1):
                rows.append((kind, f"worker {index}", len(delays), *percentiles(delays)))
    finally:
        if etcd is not None:
            etcd.close()
        if double is not None:
            double.stop()
    print(
        f"\nregistry write → first request routed by the new list in each worker"
        f" ({args.changes} changes, worker_processes {args.workers}, upsync_interval=30s)\n"
    )
    print("| registry | worker | timed changes | p50 ms | p99 ms | max ms |")
    print("|---|---|---:|---:|---:|---:|")
    for kind, worker, count, p50, p99, worst in rows:
        name = {
            "etcd": "etcd v2",
            "etcdv3": "etcd v3",
            "consul": "Consul KV" + ("" if consul_real else " (API double)"),
        }[kind]
        print(f"| {name} | {worker} | {count} | {p50:.1f} | {p99:.1f} | {worst:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
