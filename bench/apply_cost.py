"""The cost of applying one registry change to an upstream of 10,000 servers.

Measures UpstreamSync.apply() (diff, keep peer state, rebuild the balancer) for a snapshot in
which one server changed, and separately what surrounds it: turning 10,000 registry entries into
a snapshot, and writing the dump file.

    .venv/bin/python bench/apply_cost.py [--servers 10000] [--changes 200]
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from upsync.config.model import BalanceMethod, UpstreamConfig
from upsync.config.upsync import parse_upsync
from upsync.sources.entries import EntryParser
from upsync.upstream.dump import write_dump
from upsync.upstream.group import UpstreamGroup
from upsync.upstream.sync import UpstreamSync


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = parse_upsync(
            ("127.0.0.1:2379/upstreams/big/", "upsync_type=etcdv3"), f"{tmp}/dump.conf", "big"
        )
        group = UpstreamGroup(UpstreamConfig("big", (), BalanceMethod()))
        sync = UpstreamSync(group, spec)
        sync._schedule_dump = lambda: None  # type: ignore[method-assign]  # timed apart below
        entries = {
            f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}:80": b'{"weight":1}'
            for i in range(args.servers)
        }
        parse = EntryParser()
        started = time.perf_counter()
        sync.apply(parse.snapshot(list(entries.items())))
        first = time.perf_counter() - started
        keys = sorted(entries)
        apply_ms, parse_ms = [], []
        for change in range(args.changes):
            entries[keys[change % len(keys)]] = b'{"weight":%d}' % (change % 5 + 2)
            t0 = time.perf_counter()
            snapshot = parse.snapshot(list(entries.items()))
            t1 = time.perf_counter()
            sync.apply(snapshot)
            t2 = time.perf_counter()
            parse_ms.append((t1 - t0) * 1000)
            apply_ms.append((t2 - t1) * 1000)
        t0 = time.perf_counter()
        write_dump(f"{tmp}/dump.conf", group.specs())
        dump_ms = (time.perf_counter() - t0) * 1000
    assert len(group.peers) == args.servers
    print(f"{args.servers} servers, {args.changes} changes of one server each")
    print("| step | p50 ms | p99 ms |\n|---|---:|---:|")
    print(
        f"| apply (diff, peer state, balancer) | {statistics.median(apply_ms):.2f} | {percentile(apply_ms, 0.99):.2f} |"
    )
    print(
        f"| entries to snapshot (parse cache) | {statistics.median(parse_ms):.2f} | {percentile(parse_ms, 0.99):.2f} |"
    )
    print(f"| dump write (off the event loop) | {dump_ms:.2f} | |")
    print(f"first load of all servers: {first * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
