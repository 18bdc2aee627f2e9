"""The process model, upsync beside nginx in one run:

1. requests/s with `worker_processes 2` for both, keep-alive and a new connection per request.
   Unpinned: on a 2-core machine wrk, the backend and both proxies' workers share the cores, so
   this shows the two scaling side by side, not per-core speed (proxy_bench.py pins one worker
   each to its own core);
2. churn: while wrk runs, a server is added to or removed from the upstream in etcd every 100 ms;
   upsync's requests/s against the same run without churn, and failed requests. etcd and the
   thread that writes to it run on wrk's core: a registry has its own host, and its work on the
   proxy's core would be charged to upsync;
3. reload under load: a reload every 100 ms, upsync and nginx each (one worker, pinned as in
   proxy_bench.py): requests/s against rounds without reloads, p99, failed requests;
4. memory: resident size of upsync's master, spawner and each worker, idle and holding 10,000
   open keep-alive client connections.

Rounds alternate between the compared runs; figures are medians, failures are totals.

    .venv/bin/python bench/workers_bench.py [--rounds 3] [--seconds 5] [--only churn]
"""

import argparse
import asyncio
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import proxy_bench as pb

from tests.registries import Etcd, EtcdV3Driver

PROXY_CPU, LOAD_CPU = 1, 0
CONNECTIONS = 50
HELD_CONNECTIONS = 10_000


def every_100ms(action: Callable[[int], None], stop: threading.Event) -> threading.Thread:
    def run() -> None:
        os.sched_setaffinity(0, {LOAD_CPU})  # this thread only: wrk is pinned on its own
        n = 0
        while not stop.is_set():
            action(n)
            n += 1
            time.sleep(0.1)  # the pace under test

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def under(
    action: Callable[[int], None] | None,
    port: int,
    args: argparse.Namespace,
    close: bool = False,
    cpu: int | None = LOAD_CPU,
) -> pb.Result:
    """One wrk run, with `action` repeated every 100 ms meanwhile (if given)."""
    stop = threading.Event()
    thread = every_100ms(action, stop) if action is not None else None
    try:
        return pb.run_wrk(port, args.seconds, CONNECTIONS, close, cpu, quiet=True)
    finally:
        stop.set()
        if thread is not None:
            thread.join()


def median(results: list[pb.Result]) -> pb.Result:
    return pb.Result(
        statistics.median(r.rps for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        sum(r.failed for r in results),
    )


def row(label: str, result: pb.Result, against: pb.Result | None = None) -> str:
    ratio = f"{result.rps / against.rps:.2f}" if against else ""
    return f"| {label} | {result.rps:,.0f} | {ratio} | {result.p99_ms:.2f} | {result.failed} |"


def two_workers(workdir: Path, args: argparse.Namespace) -> list[str]:
    backend, nginx_port, upsync_port = pb.free_port(), pb.free_port(), pb.free_port()
    procs = [
        pb.start_nginx(workdir, "backend2", pb.backend_config(backend), None),
        pb.start_nginx(workdir, "nginx2", pb.proxy_config(nginx_port, backend, 2), None, True),
        pb.start_upsync(workdir, pb.proxy_config(upsync_port, backend, 2), None),
    ]
    lines = []
    try:
        for port in (backend, nginx_port, upsync_port):
            pb.wait_port(port)
        for mode, close in (("keep-alive", False), ("new connection", True)):
            samples: dict[str, list[pb.Result]] = {"nginx": [], "upsync": []}
            for _ in range(args.rounds):
                for name, port in (("nginx", nginx_port), ("upsync", upsync_port)):
                    samples[name].append(under(None, port, args, close, None))
            nginx, upsync = median(samples["nginx"]), median(samples["upsync"])
            lines.append(row(f"{mode}, 2 workers: nginx", nginx))
            lines.append(row(f"{mode}, 2 workers: upsync (ratio to nginx)", upsync, nginx))
    finally:
        stop_all(procs)
    return lines


def churn(workdir: Path, args: argparse.Namespace) -> list[str]:
    etcd = Etcd(cpu=LOAD_CPU).start()
    backend_a, backend_b, port = pb.free_port(), pb.free_port(), pb.free_port()
    driver = EtcdV3Driver(etcd, "bench/churn")
    driver.put(f"127.0.0.1:{backend_a}")
    upstream = f"{driver.upsync()} upsync_dump_path {workdir}/churn_dump.conf;"
    procs = [
        pb.start_nginx(workdir, "backend_churn", pb.backend_config(backend_a, backend_b), LOAD_CPU),
        pb.start_upsync(workdir, pb.proxy_config(port, backend_a, 1, upstream), PROXY_CPU),
    ]

    def flip(n: int) -> None:
        if n % 2 == 0:
            driver.put(f"127.0.0.1:{backend_b}")
        else:
            driver.delete(f"127.0.0.1:{backend_b}")

    try:
        for p in (backend_a, backend_b, port):
            pb.wait_port(p)
        calm: list[pb.Result] = []
        churned: list[pb.Result] = []
        cpu_per_request: dict[bool, list[float]] = {False: [], True: []}
        tree = [procs[1].pid, *descendants(procs[1].pid)]
        for n in range(args.rounds):  # which goes first alternates: no drift favours one
            for churning in (False, True) if n % 2 == 0 else (True, False):
                before = cpu_seconds(tree)
                result = under(flip if churning else None, port, args)
                spent = cpu_seconds(tree) - before
                cpu_per_request[churning].append(spent / (result.rps * args.seconds))
                (churned if churning else calm).append(result)
    finally:
        stop_all(procs)
        driver.delete_all()
        etcd.close()
    quiet, busy = median(calm), median(churned)
    calm_cost, churn_cost = (statistics.median(cpu_per_request[c]) for c in (False, True))
    return [
        row("upsync, 1 worker, no churn", quiet),
        row("upsync, a server added or removed in etcd every 100 ms", busy, quiet),
        f"| upsync's CPU per request (master and worker), no churn: {calm_cost * 1e6:.1f} µs;"
        f" with churn: {churn_cost * 1e6:.1f} µs | | {calm_cost / churn_cost:.2f} | | |",
    ]


def cpu_seconds(pids: list[int]) -> float:
    """User and system time of these processes so far (wall-clock figures on a shared VM vary
    by ±15 % between rounds; the CPU a request costs the proxy does not)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def reloads(workdir: Path, args: argparse.Namespace) -> list[str]:
    backend, nginx_port, upsync_port = pb.free_port(), pb.free_port(), pb.free_port()
    nginx_conf = pb.proxy_config(nginx_port, backend)
    procs = [
        pb.start_nginx(workdir, "backend_reload", pb.backend_config(backend), LOAD_CPU),
        pb.start_nginx(workdir, "nginx_reload", nginx_conf, PROXY_CPU, True),
        pb.start_upsync(workdir, pb.proxy_config(upsync_port, backend), PROXY_CPU),
    ]
    lines = []
    try:
        for port in (backend, nginx_port, upsync_port):
            pb.wait_port(port)
        masters = {"nginx": procs[1].pid, "upsync": procs[2].pid}
        ports = {"nginx": nginx_port, "upsync": upsync_port}
        samples: dict[str, list[pb.Result]] = {"nginx": [], "upsync": []}
        reloaded: dict[str, list[pb.Result]] = {"nginx": [], "upsync": []}
        for _ in range(args.rounds):
            for name in ("nginx", "upsync"):
                pid = masters[name]
                samples[name].append(under(None, ports[name], args))
                reloaded[name].append(
                    under(lambda n, pid=pid: os.kill(pid, signal.SIGHUP), ports[name], args)
                )
        for name in ("nginx", "upsync"):
            calm, busy = median(samples[name]), median(reloaded[name])
            lines.append(row(f"{name}, no reloads", calm))
            lines.append(row(f"{name}, reloaded every 100 ms", busy, calm))
    finally:
        stop_all(procs)
    return lines


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


async def hold_connections(port: int, count: int) -> list[asyncio.StreamWriter]:
    """`count` keep-alive connections, each having had one request answered."""
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    held: list[asyncio.StreamWriter] = []

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await reader.readuntil(b"backend\n")
        held.append(writer)

    for start in range(0, count, 500):
        await asyncio.gather(*(one() for _ in range(start, min(count, start + 500))))
    return held


def memory(workdir: Path) -> list[str]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    backend, port = pb.free_port(), pb.free_port()
    conf = pb.proxy_config(port, backend, 2).replace(
        "worker_connections 4096", f"worker_connections {HELD_CONNECTIONS + 1000}"
    )
    procs = [
        pb.start_nginx(workdir, "backend_mem", pb.backend_config(backend), LOAD_CPU),
        pb.start_upsync(workdir, conf, None),
    ]
    lines = []
    try:
        pb.wait_port(backend)
        pb.wait_port(port)
        master = procs[1].pid
        spawner = children(master)[0]
        workers = children(spawner)
        idle = {pid: rss_kb(pid) for pid in (master, spawner, *workers)}

        async def held_then_measure() -> dict[int, int]:
            held = await hold_connections(port, HELD_CONNECTIONS)
            measured = {pid: rss_kb(pid) for pid in (master, spawner, *workers)}
            for writer in held:
                writer.close()
            return measured

        busy = asyncio.run(held_then_measure())
        names = {master: "master", spawner: "spawner"}
        for pid in (master, spawner, *workers):
            name = names.get(pid, f"worker {pid}")
            lines.append(f"| {name} | {idle[pid] / 1024:.1f} | {busy[pid] / 1024:.1f} |")
    finally:
        stop_all(procs)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return lines


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(15)


SECTIONS: dict[str, Callable[[Path, argparse.Namespace], list[str]]] = {
    "two-workers": two_workers,
    "churn": churn,
    "reload": reloads,
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument(
        "--only", choices=[*sorted(SECTIONS), "memory"], help="one part of the table"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "logs").mkdir()
        sections = list(SECTIONS.values()) if args.only is None else []
        if args.only in SECTIONS:
            sections = [SECTIONS[args.only]]
        table = [line for section in sections for line in section(workdir, args)]
        mem = memory(workdir) if args.only in (None, "memory") else []
    print(
        f"\nwrk -t1 -c{CONNECTIONS} -d{args.seconds}s, {args.rounds} alternating rounds, medians"
        " (failed: totals over the rounds)\n"
    )
    print("| run | requests/s | ratio | p99 ms | failed |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(table))
    if mem:
        print(f"\nresident memory (MB), idle and holding {HELD_CONNECTIONS:,} keep-alive clients\n")
        print("| process | idle | holding |")
        print("|---|---:|---:|")
        print("\n".join(mem))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
