"""A reload every 100 ms while wrk keeps 20 connections busy: no request fails, with keep-alive
clients and with a new connection per request (nginx, measured the same way, drops some)."""

import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

from tests.helpers import free_port, request, running_nginx, running_upsync, wait_until

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")

BACKEND = """
events {{}}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}
}}
"""

PROXY = """
{main}
events {{ worker_connections 1024; }}
http {{
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # {marker}
        }}
        location = /marker {{ return 200 "{marker}"; }}
    }}
}}
"""


def wrk(port: int, seconds: int, close: bool) -> str:
    argv = ["wrk", "-t1", "-c20", f"-d{seconds}s", f"http://127.0.0.1:{port}/"]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout


def failures(report: str) -> tuple[int, int, int]:
    """Requests done, non-2xx answers, socket errors, from wrk's report."""
    done = re.search(r"(\d+) requests in", report)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report
    )
    assert done is not None, report
    return (
        int(done.group(1)),
        int(non2xx.group(1)) if non2xx else 0,
        sum(int(n) for n in errors.groups()) if errors else 0,
    )


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "new-connections"])
@pytest.mark.parametrize(
    "main", ["worker_processes 2;", "master_process off;"], ids=["workers", "one-process"]
)
def test_reload_every_100ms_under_load_fails_no_request(close: bool, main: str) -> None:
    backend, port = free_port(), free_port()
    with running_nginx(BACKEND.format(port=backend), backend):

        def config(marker: object) -> str:
            return PROXY.format(main=main, backend=backend, port=port, marker=marker)

        with running_upsync(config(0), port) as proc:
            path = proc.workdir / "upsync.conf"
            log = proc.workdir / "error.log"
            stop = threading.Event()
            reloads = 0

            def reload_often() -> None:
                nonlocal reloads
                while not stop.is_set():
                    reloads += 1
                    # written whole, then renamed: a reload never reads a half-written file
                    draft = path.with_suffix(".draft")
                    draft.write_text(config(reloads))
                    draft.replace(path)
                    proc.signal(signal.SIGHUP)
                    time.sleep(0.1)  # the pace under test, not a wait for a condition

            reloader = threading.Thread(target=reload_often)
            reloader.start()
            try:
                report = wrk(port, 6, close)
            finally:
                stop.set()
                reloader.join()
            # reloads asked for while one runs are merged into one more: the last one applies
            path.write_text(config("last"))
            proc.signal(signal.SIGHUP)
            wait_until(lambda: request(port, "/marker")[2] == b"last")
            done, non2xx, errors = failures(report)
            assert reloads >= 40
            assert log.read_text().count("configuration reloaded") >= 20
            assert done > 1000, report
            assert (non2xx, errors) == (0, 0), report
