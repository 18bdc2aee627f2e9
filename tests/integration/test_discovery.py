"""Upstreams following a real etcd (v2 and v3) and the Consul API double: the same cases for each
registry, one test per behaviour the issue names."""

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.consul_double import ConsulDouble
from tests.helpers import Backend, free_port, request, running_upsync, wait_until
from tests.registries import (
    ConsulKVDriver,
    Driver,
    Etcd,
    EtcdV2Driver,
    EtcdV3Driver,
    http,
)


@pytest.fixture(scope="module")
def etcd() -> Iterator[Etcd]:
    server = Etcd().start()
    yield server
    server.close()


_counter = iter(range(10**6))


@pytest.fixture(params=["etcd", "etcdv3", "consul"])
def driver(request: pytest.FixtureRequest, etcd: Etcd, consul: str) -> Iterator[Driver]:
    directory = f"upstreams/t{os.getpid()}x{next(_counter)}"
    made: Driver
    if request.param == "etcd":
        made = EtcdV2Driver(etcd, directory)
    elif request.param == "etcdv3":
        made = EtcdV3Driver(etcd, directory)
    else:
        made = ConsulKVDriver(consul, directory)
    yield made
    made.delete_all()


def config(
    port: int, upsync: str, dump: Path, static: str = "server 127.0.0.1:9 ;", extra: str = ""
) -> str:
    return f"""
events {{}}
http {{
    upstream test {{
        {static}
        {upsync}
        upsync_dump_path {dump};
        {extra}
    }}
    upstream backend {{
        server 127.0.0.1:8090 weight=10 max_fails=3 fail_timeout=10;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://test; }}
        location /upstream_list {{ upstream_show; }}
    }}
}}
"""


def show(port: int, query: str = "test") -> str:
    status, _, body = request(port, f"/upstream_list?{query}")
    assert status == 200
    return body.decode()


def listing(*lines: str) -> str:
    head = f"Upstream name: test; Backend server count: {len(lines)}\n"
    return head + "".join(f"        {line}\n" for line in lines) + "\n"


def wait_show(port: int, *lines: str, timeout: float = 10.0) -> None:
    expected = listing(*lines)
    try:
        wait_until(lambda: show(port) == expected, timeout=timeout)
    except AssertionError:
        assert show(port) == expected  # shows the difference


def status_json(port: int) -> dict[str, object]:
    _, _, body = request(port, "/upstream_list?test&format=json")
    result: dict[str, object] = json.loads(body)["upstreams"][0]
    return result


def test_add_attributes_partial_empty_and_delete(driver: Driver, tmp_path: Path) -> None:
    """The C module's own test sequence (test/t/upsync.t), on every registry."""
    port = free_port()
    dump = tmp_path / "servers_test.conf"
    driver.put("127.0.0.1:8089", "")
    with running_upsync(config(port, driver.upsync(), dump), port):
        wait_show(port, "server 127.0.0.1:8089 weight=1 max_fails=2 fail_timeout=10s;")
        driver.put("127.0.0.1:8088", '{"weight":10,"max_fails":3,"fail_timeout":10}')
        wait_show(
            port,
            "server 127.0.0.1:8088 weight=10 max_fails=3 fail_timeout=10s;",
            "server 127.0.0.1:8089 weight=1 max_fails=2 fail_timeout=10s;",
        )
        driver.delete("127.0.0.1:8089")
        wait_show(port, "server 127.0.0.1:8088 weight=10 max_fails=3 fail_timeout=10s;")
        driver.put("127.0.0.1:8089", '{"weight":20,"max_fails":0,"fail_timeout":30}')
        wait_show(
            port,
            "server 127.0.0.1:8089 weight=20 max_fails=0 fail_timeout=30s;",
            "server 127.0.0.1:8088 weight=10 max_fails=3 fail_timeout=10s;",
        )
        # a partial value: missing fields take their defaults, not their previous values
        driver.put("127.0.0.1:8088", '{"weight":40}')
        wait_show(
            port,
            "server 127.0.0.1:8089 weight=20 max_fails=0 fail_timeout=30s;",
            "server 127.0.0.1:8088 weight=40 max_fails=2 fail_timeout=10s;",
        )
        driver.put("127.0.0.1:8088", '{"weight":40,"max_fails":3,"fail_timeout":20, "down":1}')
        wait_show(
            port,
            "server 127.0.0.1:8089 weight=20 max_fails=0 fail_timeout=30s;",
            "server 127.0.0.1:8088 weight=40 max_fails=3 fail_timeout=20s down;",
        )
        expected_dump = (
            "server 127.0.0.1:8089 weight=20 max_fails=0 fail_timeout=30s;\n"
            "server 127.0.0.1:8088 weight=40 max_fails=3 fail_timeout=20s down;\n"
        )
        wait_until(lambda: dump.read_text() == expected_dump)  # written off the event loop
        # the other upstream is shown too, after a blank line, as the C module prints it
        assert show(port, "").endswith(
            "\nUpstream name: backend; Backend server count: 1\n"
            "        server 127.0.0.1:8090 weight=10 max_fails=3 fail_timeout=10s;\n\n"
        )


def test_delete_everything_keeps_the_last_list(driver: Driver, tmp_path: Path) -> None:
    port = free_port()
    dump = tmp_path / "servers_test.conf"
    driver.put("127.0.0.1:8088", '{"weight":40}')
    with running_upsync(config(port, driver.upsync(), dump), port) as proc:
        wait_show(port, "server 127.0.0.1:8088 weight=40 max_fails=2 fail_timeout=10s;")
        driver.delete_all()
        wait_until(lambda: "lists no servers" in (proc.workdir / "error.log").read_text())
        assert show(port) == listing(
            "server 127.0.0.1:8088 weight=40 max_fails=2 fail_timeout=10s;"
        )
        wait_until(
            lambda: (
                dump.read_text()
                == "server 127.0.0.1:8088 weight=40 max_fails=2 fail_timeout=10s;\n"
            )
        )
        driver.put("127.0.0.1:8089")
        wait_show(port, "server 127.0.0.1:8089 weight=1 max_fails=2 fail_timeout=10s;")


def test_bad_entries_are_skipped_and_logged_once(driver: Driver, tmp_path: Path) -> None:
    port = free_port()
    dump = tmp_path / "servers_test.conf"
    driver.put("127.0.0.1:8001", '{"weight":3,"down":1}')
    with running_upsync(config(port, driver.upsync(), dump), port) as proc:
        wait_show(port, "server 127.0.0.1:8001 weight=3 max_fails=2 fail_timeout=10s down;")
        driver.put("127.0.0.1:8001", "{not json")  # known server, bad value: keeps its attributes
        driver.put("127.0.0.1:8002", '{"weight":0}')  # new server, bad value: skipped
        driver.put("not-an-address", "{}")  # key that is not host:port: skipped
        driver.put("127.0.0.1:8003", '{"max_fails":-1}')
        driver.put("127.0.0.1:8004", '{"weight":2}')  # the rest of the list applies
        wait_show(
            port,
            "server 127.0.0.1:8004 weight=2 max_fails=2 fail_timeout=10s;",
            "server 127.0.0.1:8001 weight=3 max_fails=2 fail_timeout=10s down;",
        )
        driver.put("127.0.0.1:8005", "")  # more syncs: the bad entries are not logged again
        wait_until(lambda: "127.0.0.1:8005" in show(port))
        log = (proc.workdir / "error.log").read_text()
        for key in ("127.0.0.1:8001", "127.0.0.1:8002", "not-an-address", "127.0.0.1:8003"):
            assert log.count(f'registry entry "{key}" ignored') == 1, key
        assert "keeps its last good attributes" in log


def test_traffic_follows_the_registry(driver: Driver, tmp_path: Path) -> None:
    port = free_port()
    with Backend("a") as a, Backend("b") as b:
        driver.put(f"127.0.0.1:{a.port}")
        with running_upsync(config(port, driver.upsync(), tmp_path / "d.conf"), port):
            wait_until(lambda: request(port, "/")[2] == b"a\n")
            driver.put(f"127.0.0.1:{b.port}")
            wait_until(lambda: {request(port, "/")[2] for _ in range(4)} == {b"a\n", b"b\n"})
            driver.delete(f"127.0.0.1:{a.port}")
            wait_until(lambda: f"127.0.0.1:{a.port}" not in show(port))
            before = len(a.requests)
            assert {request(port, "/")[2] for _ in range(6)} == {b"b\n"}
            assert len(a.requests) == before  # a removed server gets no new request


def test_strong_dependency_on_refuses_to_start(driver: Driver, tmp_path: Path) -> None:
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"
    line = driver.upsync("strong_dependency=on").replace(_registry_address(driver), dead)
    with pytest.raises(AssertionError) as info:
        with running_upsync(config(port, line, tmp_path / "d.conf"), port):
            pass
    message = str(info.value)
    assert "strong_dependency=on" in message and dead in message


def test_start_without_registry_uses_dump_then_static(driver: Driver, tmp_path: Path) -> None:
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"
    line = driver.upsync().replace(_registry_address(driver), dead)
    dump = tmp_path / "servers_test.conf"
    with running_upsync(config(port, line, dump, static="server 127.0.0.1:7777;"), port):
        assert show(port) == listing("server 127.0.0.1:7777 weight=1 max_fails=1 fail_timeout=10s;")
        assert status_json(port)["source"] == "static"
    dump.write_text("server 127.0.0.1:8088 weight=40 max_fails=2 fail_timeout=10s;\n")
    with running_upsync(config(port, line, dump, static=""), port):
        assert show(port) == listing(
            "server 127.0.0.1:8088 weight=40 max_fails=2 fail_timeout=10s;"
        )
        state = status_json(port)
        assert state["source"] == "dump" and state["reachable"] is False


def _registry_address(driver: Driver) -> str:
    if isinstance(driver, EtcdV2Driver | EtcdV3Driver):
        return driver.etcd.address
    assert isinstance(driver, ConsulKVDriver)
    return driver.address


def test_upstream_without_static_servers_is_valid(driver: Driver, tmp_path: Path) -> None:
    port = free_port()
    driver.put("127.0.0.1:8001")
    with running_upsync(
        config(port, driver.upsync(), tmp_path / "nested" / "dir" / "d.conf", static=""), port
    ):
        wait_show(port, "server 127.0.0.1:8001 weight=1 max_fails=2 fail_timeout=10s;")
        wait_until((tmp_path / "nested" / "dir" / "d.conf").exists)  # directory created


def test_thousand_server_upstream(driver: Driver, tmp_path: Path) -> None:
    port = free_port()
    for i in range(1000):
        driver.put(f"10.0.{i // 250}.{i % 250 + 1}:80", '{"weight":2}')
    with running_upsync(config(port, driver.upsync(), tmp_path / "d.conf"), port):
        wait_until(
            lambda: show(port).startswith("Upstream name: test; Backend server count: 1000\n")
        )
        driver.delete("10.0.0.1:80")
        wait_until(
            lambda: show(port).startswith("Upstream name: test; Backend server count: 999\n")
        )
        wait_until(lambda: len((tmp_path / "d.conf").read_text().splitlines()) == 999)


# registry outages: a private etcd per test, so stopping it disturbs nothing else


@pytest.fixture
def own_etcd() -> Iterator[Etcd]:
    server = Etcd().start()
    yield server
    server.close()


@pytest.mark.parametrize("kind", ["etcd", "etcdv3"])
def test_etcd_outage_keeps_serving_and_resyncs(kind: str, own_etcd: Etcd, tmp_path: Path) -> None:
    driver: Driver = (
        EtcdV2Driver(own_etcd, "upstreams/outage")
        if kind == "etcd"
        else EtcdV3Driver(own_etcd, "upstreams/outage")
    )
    port = free_port()
    dump = tmp_path / "servers_test.conf"
    with Backend("a") as a:
        driver.put(f"127.0.0.1:{a.port}")
        with running_upsync(config(port, driver.upsync(), dump), port) as proc:
            wait_until(lambda: request(port, "/")[2] == b"a\n")
            own_etcd.stop(signal.SIGKILL)
            wait_until(lambda: status_json(port)["reachable"] is False)
            for _ in range(5):
                assert request(port, "/")[2] == b"a\n"  # traffic goes on
            own_etcd.start()
            wait_until(lambda: status_json(port)["reachable"] is True, timeout=20)
            driver.put("127.0.0.1:8002")
            wait_until(lambda: "127.0.0.1:8002" in show(port))
            log = (proc.workdir / "error.log").read_text()
            assert log.count("unreachable") == 1  # logged when it starts...
            assert log.count("reachable again") == 1  # ...and when it ends
            # restart while the registry is down: the dump is used
            proc.stop()
            own_etcd.stop()
            with running_upsync(
                config(port, driver.upsync(), dump, static="server 127.0.0.1:9;"), port
            ):
                assert f"127.0.0.1:{a.port}" in show(port)
                assert status_json(port)["source"] == "dump"
                assert request(port, "/")[2] == b"a\n"


def test_consul_outage_keeps_serving_and_resyncs(tmp_path: Path) -> None:
    double = ConsulDouble().start()
    driver = ConsulKVDriver(double.address, "upstreams/outage")
    port = free_port()
    try:
        with Backend("a") as a:
            driver.put(f"127.0.0.1:{a.port}")
            with running_upsync(config(port, driver.upsync(), tmp_path / "d.conf"), port):
                wait_until(lambda: request(port, "/")[2] == b"a\n")
                double.stop()
                wait_until(lambda: status_json(port)["reachable"] is False)
                assert request(port, "/")[2] == b"a\n"
                double.start()
                driver.put("127.0.0.1:8002")
                wait_until(lambda: "127.0.0.1:8002" in show(port), timeout=20)
                assert status_json(port)["reachable"] is True
    finally:
        double.stop()


def test_etcd_v2_index_cleared_reads_again(own_etcd: Etcd, tmp_path: Path) -> None:
    driver = EtcdV2Driver(own_etcd, "upstreams/cleared")
    other = EtcdV2Driver(own_etcd, "elsewhere")
    port = free_port()
    driver.put("127.0.0.1:8001")
    line = driver.upsync().replace("upsync_timeout=20s", "upsync_timeout=1s")
    with running_upsync(config(port, line, tmp_path / "d.conf"), port) as proc:
        wait_show(port, "server 127.0.0.1:8001 weight=1 max_fails=2 fail_timeout=10s;")
        # etcd keeps 1000 events: after more than that, upsync's next wait index is gone
        for i in range(1100):
            other.put("k", str(i))
        wait_until(
            lambda: (
                "was cleared (etcd keeps 1000 events)" in (proc.workdir / "error.log").read_text()
            ),
            timeout=15,
        )
        driver.put("127.0.0.1:8002")
        wait_until(lambda: "127.0.0.1:8002" in show(port))


def test_etcd_v3_compaction(own_etcd: Etcd, tmp_path: Path) -> None:
    driver = EtcdV3Driver(own_etcd, "upstreams/compacted")
    port = free_port()
    driver.put("127.0.0.1:8001")
    with running_upsync(config(port, driver.upsync(), tmp_path / "d.conf"), port) as proc:
        wait_show(port, "server 127.0.0.1:8001 weight=1 max_fails=2 fail_timeout=10s;")
        proc.signal(signal.SIGSTOP)  # upsync falls behind...
        try:
            driver.put("127.0.0.1:8002")
            own_etcd.stop()  # ...its watch stream is cut...
            own_etcd.start()
            driver.put("127.0.0.1:8003")
            driver.compact()  # ...and the history it would resume from is compacted away
        finally:
            proc.signal(signal.SIGCONT)
        # 8002 comes either as its own watch event (if it reached upsync's socket before etcd
        # stopped) or with 8003 in the re-read after compaction: new servers come first either
        # way, in an order that depends on which
        line = "server 127.0.0.1:{} weight=1 max_fails=2 fail_timeout=10s;"
        wait_until(
            lambda: show(port)
            in (
                listing(line.format(8003), line.format(8002), line.format(8001)),
                listing(line.format(8002), line.format(8003), line.format(8001)),
            ),
            timeout=20,
        )
        driver.put("127.0.0.1:8004")
        wait_until(lambda: "127.0.0.1:8004" in show(port))


def test_dump_is_replaced_atomically(etcd: Etcd, tmp_path: Path) -> None:
    driver = EtcdV3Driver(etcd, f"upstreams/atomic{os.getpid()}")
    port = free_port()
    dump = tmp_path / "servers_test.conf"
    driver.put("127.0.0.1:8001")
    with running_upsync(config(port, driver.upsync(), dump), port):
        wait_until(dump.exists)
        first = dump.read_text()
        held = dump.open()  # a reader that opened the old dump keeps reading the old list
        seen: set[str] = set()
        for i in range(30):
            driver.put(f"127.0.0.1:{9000 + i}")
            seen.add(dump.read_text())  # never empty, never torn: every read is a whole list
        wait_until(lambda: "127.0.0.1:9029" in dump.read_text())
        assert all(text and text.endswith(";\n") for text in seen)
        assert held.read() == first  # replaced by rename, never rewritten in place
        held.close()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".upsync-")]
    driver.delete_all()


def test_several_registry_addresses_are_tried_in_turn(etcd: Etcd, tmp_path: Path) -> None:
    driver = EtcdV2Driver(etcd, f"upstreams/multi{os.getpid()}")
    port = free_port()
    driver.put("127.0.0.1:8001")
    line = driver.upsync().replace(etcd.address, f"127.0.0.1:{free_port()},{etcd.address}")
    with running_upsync(config(port, line, tmp_path / "d.conf"), port):
        wait_show(port, "server 127.0.0.1:8001 weight=1 max_fails=2 fail_timeout=10s;")
        assert status_json(port)["source"] == "registry"
    driver.delete_all()


def test_change_reaches_routing_fast_whatever_the_interval(etcd: Etcd, tmp_path: Path) -> None:
    driver = EtcdV3Driver(etcd, f"upstreams/fast{os.getpid()}")
    port = free_port()
    driver.put("127.0.0.1:8001")
    line = driver.upsync().replace("upsync_interval=100ms", "upsync_interval=30s")
    with running_upsync(config(port, line, tmp_path / "d.conf"), port):
        wait_until(lambda: "127.0.0.1:8001" in show(port))
        for i in range(5):  # changes in quick succession each arrive, no interval in between
            started = time.monotonic()
            driver.put(f"127.0.0.1:{8100 + i}")
            wait_until(lambda i=i: f"127.0.0.1:{8100 + i}" in show(port), interval=0.005)  # type: ignore[misc]
            assert time.monotonic() - started < 1.0
    driver.delete_all()


def test_registry_answer_via_http_put_matches_etcd_readme(etcd: Etcd) -> None:
    """The C module's README adds etcd servers with `curl -X PUT -d value=...`."""
    status, _ = http(
        "PUT",
        f"http://{etcd.address}/v2/keys/upstreams/readme/127.0.0.1:8001",
        b'value={"weight":1}',
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status in (200, 201)


def test_reload_keeps_the_synced_list_even_with_the_registry_down(
    own_etcd: Etcd, tmp_path: Path
) -> None:
    """The C module's issues #180/#186: after a reload, requests went to the placeholder."""
    driver = EtcdV3Driver(own_etcd, "upstreams/reload")
    port = free_port()
    with Backend("a") as a:
        driver.put(f"127.0.0.1:{a.port}")
        with running_upsync(config(port, driver.upsync(), tmp_path / "d.conf"), port) as proc:
            wait_until(lambda: request(port, "/")[2] == b"a\n")
            proc.signal(signal.SIGHUP)
            wait_until(lambda: "configuration reloaded" in (proc.workdir / "error.log").read_text())
            assert [request(port, "/")[2] for _ in range(3)] == [b"a\n"] * 3
            own_etcd.stop()
            proc.signal(signal.SIGHUP)
            wait_until(
                lambda: (
                    (proc.workdir / "error.log").read_text().count("configuration reloaded") == 2
                )
            )
            assert [request(port, "/")[2] for _ in range(3)] == [b"a\n"] * 3
            assert status_json(port)["source"] == "registry"


def test_retries_use_the_current_list_not_the_start_up_one(etcd: Etcd, tmp_path: Path) -> None:
    """With the seed's config the C module answers 502 for a dead server, never trying the live
    one: it keeps the retry count of its one-server start-up list."""
    driver = EtcdV2Driver(etcd, f"upstreams/retry{os.getpid()}")
    port = free_port()
    with Backend("live") as live:
        driver.put(f"127.0.0.1:{free_port()}", '{"max_fails":0}')  # dead
        driver.put(f"127.0.0.1:{live.port}", '{"max_fails":0}')
        with running_upsync(
            config(port, driver.upsync(), tmp_path / "d.conf", static="server localhost:8003;"),
            port,
        ):
            wait_until(lambda: "Backend server count: 2" in show(port))
            assert [request(port, "/")[:3:2] for _ in range(4)] == [(200, b"live\n")] * 4
    driver.delete_all()


def test_removed_server_finishes_its_in_flight_request(etcd: Etcd, tmp_path: Path) -> None:
    import threading

    driver = EtcdV3Driver(etcd, f"upstreams/inflight{os.getpid()}")
    port = free_port()
    with Backend("slow", delay=1.0) as slow, Backend("other") as other:
        driver.put(f"127.0.0.1:{slow.port}")
        with running_upsync(config(port, driver.upsync(), tmp_path / "d.conf", static=""), port):
            wait_until(lambda: f"127.0.0.1:{slow.port}" in show(port))
            results: list[tuple[int, bytes]] = []
            worker = threading.Thread(target=lambda: results.append(request(port, "/")[::2]))  # type: ignore[arg-type]
            worker.start()
            wait_until(lambda: len(slow.requests) == 1)
            driver.put(f"127.0.0.1:{other.port}")
            driver.delete(f"127.0.0.1:{slow.port}")
            wait_until(lambda: f"127.0.0.1:{slow.port}" not in show(port))
            worker.join(10)
            assert results == [(200, b"slow\n")]
            assert request(port, "/")[2] == b"other\n"
    driver.delete_all()


def test_etcd_v3_watch_event_over_512_kib_is_applied(etcd: Etcd, tmp_path: Path) -> None:
    driver = EtcdV3Driver(etcd, f"upstreams/large{os.getpid()}")
    port = free_port()
    driver.put("127.0.0.1:8001")
    with running_upsync(config(port, driver.upsync(), tmp_path / "d.conf"), port) as proc:
        wait_until(lambda: "127.0.0.1:8001" in show(port))
        # one event carrying a 600 KiB value (the seed's unknown "server" field is ignored)
        driver.put("127.0.0.1:8002", json.dumps({"weight": 3, "server": "x" * 600_000}))
        wait_until(lambda: "127.0.0.1:8002 weight=3" in show(port))
        driver.put("127.0.0.1:8003")  # the same watch goes on
        wait_until(lambda: "127.0.0.1:8003" in show(port))
        # ...without a failure and a full read in between
        log = (proc.workdir / "error.log").read_text()
        assert "watch failed" not in log and "unreachable" not in log, log
    driver.delete_all()
