"""The master and its workers: one registry watch for the whole instance, every worker routing
by the same list, a killed worker replaced, SIGQUIT finishing what is in flight, and a broken
configuration at reload leaving the running workers alone."""

import contextlib
import http.client
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.consul_double import ConsulDouble
from tests.helpers import (
    Backend,
    Process,
    child_pids,
    connection_per_worker,
    free_port,
    request,
    running_upsync,
    show_json,
    wait_until,
)
from tests.registries import ConsulKVDriver

CONFIG = """
worker_processes {workers};
events {{}}
http {{
    upstream test {{ {test} }}
    upstream backend {{ server 127.0.0.1:{backend}; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://backend; }}
        location /upstream_list {{ upstream_show; }}
    }}
}}
"""


def started_workers(proc: Process) -> list[int]:
    """Worker pids in the order the master reported them serving."""
    text = (proc.workdir / "error.log").read_text()
    return [int(pid) for pid in re.findall(r"start worker process (\d+)", text)]


@contextlib.contextmanager
def workers_before(
    backend: Backend, workers: int = 2, edit: Callable[[str], str] = lambda text: text
) -> Iterator[tuple[Process, int, str]]:
    """upsync with `workers` workers proxying to `backend`, once they all serve; with the
    port and the configuration's text."""
    port = free_port()
    text = edit(
        CONFIG.format(workers=workers, test="server 127.0.0.1:9;", backend=backend.port, port=port)
    )
    with running_upsync(text, port) as proc:
        wait_until(lambda: len(started_workers(proc)) == workers)
        yield proc, port, text


def reload_with(proc: Process, text: str, logged: str = "configuration reloaded") -> str:
    """Write the configuration, send SIGHUP, and wait for the master to log `logged`; the
    error log's text."""
    (proc.workdir / "upsync.conf").write_text(text)
    proc.signal(signal.SIGHUP)
    log = proc.workdir / "error.log"
    wait_until(lambda: logged in log.read_text())
    return log.read_text()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def show_text(conn: http.client.HTTPConnection) -> str:
    conn.request("GET", "/upstream_list?test")
    response = conn.getresponse()
    assert response.status == 200
    return response.read().decode()


def drain(conn: http.client.HTTPConnection, path: str, timeout: float = 5.0) -> list[bytes]:
    """Requests on a connection of a reloaded configuration until an answer closes it (each
    closes within the drain window); the bodies, every one of them answered."""
    answers = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn.request("GET", path)
        response = conn.getresponse()
        answers.append(response.read())
        if response.getheader("Connection") == "close":
            return answers
    raise AssertionError(f"still kept alive after {timeout}s: {len(answers)} answers")


def servers_of(answer: dict[str, object]) -> list[str]:
    upstreams = answer["upstreams"]
    assert isinstance(upstreams, list)
    return [server["server"] for server in upstreams[0]["servers"]]


def test_one_watch_serves_every_worker_and_each_routes_by_the_same_list(tmp_path: Path) -> None:
    double = ConsulDouble().start()
    try:
        driver = ConsulKVDriver(double.address, "upstreams/workers")
        driver.put("127.0.0.1:8001")
        port = free_port()
        text = CONFIG.format(
            workers=3,
            test=f"{driver.upsync()} upsync_dump_path {tmp_path / 'dump.conf'};",
            backend=free_port(),
            port=port,
        )
        with running_upsync(text, port) as proc:
            wait_until(lambda: len(started_workers(proc)) == 3)
            changes = 6
            with connection_per_worker(port, 3) as conns:
                for n in range(2, 2 + changes):
                    driver.put(f"127.0.0.1:80{n:02d}")
                    for conn in conns.values():
                        wait_until(lambda c=conn, n=n: len(servers_of(show_json(c))) == n)
                texts = {show_text(conn) for conn in conns.values()}
                assert len(texts) == 1, texts
                states = [show_json(conn)["upstreams"] for conn in conns.values()]
                indexes = {s[0]["last_index"] for s in states}  # type: ignore[index]
                assert len(indexes) == 1 and None not in indexes, states
            kv_reads = [r for r in double.state.requests if "/v1/kv/upstreams/workers" in r]
            # one watcher: a read per change, and a few for start-up; three would make 3x
            assert len(kv_reads) <= changes + 4, kv_reads
    finally:
        double.stop()


def test_a_killed_worker_is_replaced_and_the_others_keep_serving() -> None:
    with Backend("a") as backend, workers_before(backend) as (proc, port, _):
        failures: list[str] = []
        served = 0
        stop = threading.Event()

        def load() -> None:
            nonlocal served
            while not stop.is_set():
                try:
                    status, _, _ = request(port, "/")
                    served += 1
                    if status != 200:
                        failures.append(str(status))
                # a response the killed worker had begun ends short (IncompleteRead), or
                # its connection resets: either is a failure, counted, and the load goes on
                except (OSError, http.client.HTTPException) as exc:
                    failures.append(repr(exc))

        loader = threading.Thread(target=load)
        loader.start()
        try:
            wait_until(lambda: served > 20)
            victim = started_workers(proc)[0]
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            wait_until(lambda: len(started_workers(proc)) == 3, timeout=5)
            replaced_in = time.monotonic() - killed_at
            before = served
            wait_until(lambda: served > before + 50)
        finally:
            stop.set()
            loader.join()
        assert replaced_in < 1.0, replaced_in
        assert not alive(victim)
        # a request the killed worker had accepted may fail; nothing else does
        assert len(failures) <= 2, failures
        assert all(alive(pid) for pid in started_workers(proc)[1:])


def test_sigquit_finishes_in_flight_slow_responses() -> None:
    with Backend("slow") as backend, workers_before(backend) as (proc, port, _):
        results: list[tuple[int, bytes]] = []

        def slow() -> None:
            status, _, body = request(port, "/slow/1")
            results.append((status, body))

        threads = [threading.Thread(target=slow) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(backend.requests) == 4)
        proc.signal(signal.SIGQUIT)
        for thread in threads:
            thread.join(10)
        assert results == [(200, b"slow\n")] * 4
        assert proc.wait(10) == 0
        assert not any(alive(pid) for pid in started_workers(proc))


def test_a_broken_config_at_reload_keeps_the_workers() -> None:
    with Backend("a") as backend, workers_before(backend) as (proc, port, text):
        workers = started_workers(proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"a\n"
        logged = reload_with(proc, text.replace("listen", "listne"), "reload failed")
        assert 'unknown directive "listne"' in logged
        conn.request("GET", "/")  # the kept-alive connection goes on
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"a\n")
        assert response.getheader("Connection") != "close"
        conn.close()
        assert request(port, "/")[0] == 200
        assert started_workers(proc) == workers
        assert all(alive(pid) for pid in workers)


def test_master_process_off_runs_one_process() -> None:
    port = free_port()
    text = CONFIG.format(
        workers=4,
        test="server 127.0.0.1:9;",
        backend=free_port(),
        port=port,
    )
    with running_upsync("master_process off;\n" + text, port) as proc:
        assert proc.proc is not None
        assert child_pids(proc.proc.pid) == []
        status, _, body = request(port, "/upstream_list?format=json")
        assert status == 200 and json.loads(body)["worker"] == proc.proc.pid


def test_a_reload_within_the_same_processes_keeps_the_workers() -> None:
    """Only http-level changes: each worker takes the new configuration as its current
    generation; a kept-alive connection goes on with the old one, and closes after an answer
    within the drain window."""
    with (
        Backend("a") as backend,
        workers_before(
            backend,
            edit=lambda text: text.replace(
                "location / {", 'location = /v { return 200 "one"; } location / {'
            ),
        ) as (proc, port, text),
    ):
        workers = started_workers(proc)
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        kept.request("GET", "/v")
        assert kept.getresponse().read() == b"one"
        reload_with(proc, text.replace('"one"', '"two"'))
        answers = drain(kept, "/v")
        assert set(answers) == {b"one"}
        kept.close()
        assert request(port, "/v")[2] == b"two"
        assert started_workers(proc) == workers and all(alive(pid) for pid in workers)


def test_a_reload_of_the_main_context_replaces_the_workers() -> None:
    with Backend("a") as backend, workers_before(backend, workers=1) as (proc, port, text):
        (old,) = started_workers(proc)
        reload_with(proc, text.replace("worker_processes 1;", "worker_processes 2;"))
        new = started_workers(proc)[1:]
        assert len(new) == 2 and old not in new
        wait_until(lambda: not alive(old))
        assert request(port, "/")[2] == b"a\n"
