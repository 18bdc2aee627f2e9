"""How fast a registry change reaches routing: from the registry write returning to the first
request routed by the new list, p50/p99 over many changes, for etcd v2, etcd v3 and Consul (the
test suite's API double, or a real agent given CONSUL_HTTP_ADDR).

Each change flips server B between `down` and up in the registry (one write); B coming back is
observed as the first response from B, polled on a keep-alive connection. upsync_interval is 30s
so that only the watch, not polling, can explain the figures.

    .venv/bin/python bench/propagation.py [--changes 400] [--registry etcdv3]
"""

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.consul_double import ConsulDouble  # noqa: E402
from tests.helpers import Backend, free_port, running_upsync, wait_until  # noqa: E402
from tests.registries import (  # noqa: E402
    ConsulKVDriver,
    Driver,
    Etcd,
    EtcdV2Driver,
    EtcdV3Driver,
    consul_address_from_env,
)


def measure(driver: Driver, changes: int) -> list[float]:
    port = free_port()
    with Backend("A") as a, Backend("B") as b, tempfile.TemporaryDirectory() as tmp:
        driver.put(f"127.0.0.1:{a.port}")
        driver.put(f"127.0.0.1:{b.port}", '{"down":1}')
        line = driver.upsync().replace("upsync_interval=100ms", "upsync_interval=30s")
        config = f"""
events {{}}
http {{
    upstream test {{ {line} upsync_dump_path {tmp}/dump.conf; }}
    server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://test; }} }}
}}
"""
        with running_upsync(config, port):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

            def backend() -> bytes:
                conn.request("GET", "/")
                return conn.getresponse().read()

            wait_until(lambda: backend() == b"A\n")
            delays = []
            for change in range(changes):
                if change % 2 == 0:
                    driver.put(f"127.0.0.1:{b.port}", "{}")  # B up: time until B answers
                    written = time.perf_counter()
                    deadline = written + 5
                    while backend() != b"B\n":
                        if time.perf_counter() > deadline:
                            raise SystemExit("a change did not arrive within 5 s")
                    delays.append((time.perf_counter() - written) * 1000)
                else:
                    driver.put(f"127.0.0.1:{b.port}", '{"down":1}')
                    wait_until(
                        lambda: all(backend() == b"A\n" for _ in range(3)),
                        timeout=5,
                        interval=0.001,
                    )
            conn.close()
    driver.delete_all()
    return delays


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=400)
    parser.add_argument("--registry", choices=["etcd", "etcdv3", "consul", "all"], default="all")
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
            delays = sorted(measure(driver, args.changes))
            p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
            rows.append((kind, len(delays), statistics.median(delays), p99, delays[-1]))
    finally:
        if etcd is not None:
            etcd.close()
        if double is not None:
            double.stop()
    print(
        f"\nregistry write → first request routed by the new list ({args.changes} changes, upsync_interval=30s)\n"
    )
    print("| registry | timed changes | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for kind, count, p50, p99, worst in rows:
        name = {
            "etcd": "etcd v2",
            "etcdv3": "etcd v3",
            "consul": "Consul KV" + ("" if consul_real else " (API double)"),
        }[kind]
        print(f"| {name} | {count} | {p50:.1f} | {p99:.1f} | {worst:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
