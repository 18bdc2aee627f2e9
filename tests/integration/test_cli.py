"""The command line as a user meets it: -t, -T, -v, -s reload|quit|stop, signals."""

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import (
    Backend,
    KeepAliveClient,
    Process,
    free_port,
    request,
    running_upsync,
    wait_until,
)
from upsync.app import DRAIN_WINDOW


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "upsync", *args], capture_output=True, text=True, timeout=30
    )


GOOD = """
events {}
http {
    upstream backend { server 127.0.0.1:9; }
    server { listen 127.0.0.1:PORT; location / { return 200 "VERSION"; } }
}
"""


def test_t_reports_success(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(GOOD.replace("PORT", "1").replace("VERSION", "x"))
    result = run_cli("-t", "-c", str(conf))
    assert result.returncode == 0
    assert f"the configuration file {conf} syntax is ok" in result.stderr
    assert f"configuration file {conf} test is successful" in result.stderr


def test_t_reports_file_line_and_directive(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "events {}\nhttp {\n  server {\n    listen 80;\n    proxy_pass_typo x;\n  }\n}\n"
    )
    result = run_cli("-t", "-c", str(conf))
    assert result.returncode == 1
    assert f'[emerg] unknown directive "proxy_pass_typo" in {conf}:5' in result.stderr
    assert "test failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_start_with_bad_config_exits_non_zero(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text("events {}\nhttp {\n  upstream u { server 127.0.0.1:1 weight=x; }\n}\n")
    result = run_cli("-c", str(conf))
    assert result.returncode == 1
    assert f'invalid parameter "weight=x" in "server" directive in {conf}:3' in result.stderr


def test_capital_t_prints_the_configuration(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(GOOD.replace("PORT", "1").replace("VERSION", "x"))
    result = run_cli("-T", "-c", str(conf))
    assert result.returncode == 0
    assert f"# configuration file {conf}:" in result.stdout
    assert "upstream backend" in result.stdout


def test_version() -> None:
    result = run_cli("-v")
    assert result.returncode == 0 and "upsync version: upsync/" in result.stderr


def test_installed_build_has_the_compiled_hot_path() -> None:
    """The suite and the benchmarks run the build users get from `make run`: compiled by mypyc,
    unless UPSYNC_PURE_PYTHON asked for the interpreted one."""
    result = run_cli("-V")
    assert result.returncode == 0
    if os.environ.get("UPSYNC_PURE_PYTHON", "") in ("", "0"):
        assert "hot path compiled by mypyc" in result.stderr
        # setup.py trains the build with GCC unless told not to (the README's "How it is built")
        if os.environ.get("UPSYNC_PGO", "1") not in ("", "0"):
            assert "profile-guided" in result.stderr
    else:
        assert "hot path interpreted" in result.stderr


def test_installed_extension_is_not_the_instrumented_one() -> None:
    """The profile-guided build compiles twice; the first, instrumented, extension must never be
    the one installed (it would be slower, and write profile files where the build was)."""
    spec = importlib.util.find_spec("upsync__mypyc")
    if spec is None or spec.origin is None:
        pytest.skip("no compiled hot path installed")
    assert b"__gcov_" not in Path(spec.origin).read_bytes()


def test_profile_training_runs_through_the_installed_build() -> None:
    """The training mix setup.py runs must keep working: if it fails, builds quietly lose their
    profile (with a warning in the build's output)."""
    training = Path(__file__).resolve().parents[2] / "scripts" / "pgo_training.py"
    result = subprocess.run(
        [sys.executable, str(training)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "profile training ran" in result.stderr


def test_reload_applies_new_config_without_dropping_the_listener() -> None:
    port = free_port()
    text = GOOD.replace("PORT", str(port))
    with running_upsync(text.replace("VERSION", "one"), port) as proc:
        assert request(port, "/")[2] == b"one"
        conf = proc.workdir / "upsync.conf"
        conf.write_text(text.replace("VERSION", "two"))
        pid_args = ["-g", f"pid {proc.workdir}/upsync.pid;"]
        assert run_cli("-s", "reload", "-c", str(conf), *pid_args).returncode == 0
        wait_until(lambda: request(port, "/")[2] == b"two")
        # a broken config on reload is refused and the running one stays
        conf.write_text("events {}\nhttp { bogus; }\n")
        assert proc.proc is not None
        proc.signal(signal.SIGHUP)
        wait_until(lambda: "reload failed" in (proc.workdir / "error.log").read_text())
        assert request(port, "/")[2] == b"two"


def test_quit_finishes_in_flight_requests() -> None:
    port = free_port()
    with Backend("slow", delay=1.0) as backend:
        text = f"""
events {{}}
http {{
    upstream backend {{ server 127.0.0.1:{backend.port}; }}
    server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://backend; }} }}
}}
"""
        with running_upsync(text, port) as proc:
            results: list[int] = []
            worker = threading.Thread(target=lambda: results.append(request(port, "/")[0]))
            worker.start()
            wait_until(lambda: len(backend.requests) == 1)
            proc.signal(signal.SIGQUIT)
            worker.join(10)
            assert results == [200]
            assert proc.wait(10) == 0


def test_stop_is_immediate() -> None:
    port = free_port()
    with running_upsync(GOOD.replace("PORT", str(port)).replace("VERSION", "x"), port) as proc:
        conf = proc.workdir / "upsync.conf"
        assert (
            run_cli(
                "-s", "stop", "-c", str(conf), "-g", f"pid {proc.workdir}/upsync.pid;"
            ).returncode
            == 0
        )
        assert proc.wait(10) == 0
        assert not (proc.workdir / "upsync.pid").exists()


def test_signal_without_running_instance_is_an_error(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(GOOD.replace("PORT", "1").replace("VERSION", "x"))
    result = run_cli("-s", "reload", "-c", str(conf), "-g", f"pid {tmp_path}/none.pid;")
    assert result.returncode == 1 and "none.pid" in result.stderr


def test_port_in_use_is_reported() -> None:
    port = free_port()
    text = GOOD.replace("PORT", str(port)).replace("VERSION", "x")
    with running_upsync(text, port) as first:
        conf = first.workdir / "upsync.conf"
        result = run_cli("-c", str(conf), "-g", f"pid {first.workdir}/second.pid;")
        assert result.returncode == 1
        assert "bind() failed" in result.stderr and "Traceback" not in result.stderr


def test_reload_that_cannot_bind_keeps_the_old_listener() -> None:
    port = free_port()
    text = GOOD.replace("PORT", str(port))
    with running_upsync(text.replace("VERSION", "one"), port) as proc, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        conf = proc.workdir / "upsync.conf"
        # the port moves to one that is taken: the reload fails and the old port serves on
        conf.write_text(text.replace(f":{port};", f":{busy};").replace("VERSION", "two"))
        proc.signal(signal.SIGHUP)
        wait_until(lambda: "reload failed" in (proc.workdir / "error.log").read_text())
        assert request(port, "/")[2] == b"one"


def test_second_instance_leaves_the_pid_file_of_the_first() -> None:
    port = free_port()
    text = GOOD.replace("PORT", str(port)).replace("VERSION", "x")
    with running_upsync(text, port) as first:
        pid_file = first.workdir / "upsync.pid"
        wait_until(pid_file.exists)
        assert first.proc is not None
        assert pid_file.read_text().strip() == str(first.proc.pid)
        conf = first.workdir / "upsync.conf"
        result = run_cli("-c", str(conf), "-g", f"pid {pid_file};")
        assert result.returncode == 1
        assert pid_file.read_text().strip() == str(first.proc.pid)


RELOADABLE = """
events {}
http {
    upstream backend { server 127.0.0.1:BACKEND; }
    server { listen 127.0.0.1:PORT; location / { proxy_pass http://backend; VERSION } }
}
"""


PROCESS_MODELS = pytest.mark.parametrize(
    "main", ["worker_processes 2;", "master_process off;"], ids=["workers", "one-process"]
)


@PROCESS_MODELS
def test_connections_open_before_a_reload_are_served_after_it(main: str) -> None:
    port = free_port()
    with Backend("b") as backend:
        text = main + RELOADABLE.replace("PORT", str(port)).replace("BACKEND", str(backend.port))
        with running_upsync(text.replace("VERSION", ""), port) as proc:
            kept = KeepAliveClient(port)
            assert kept.get("/")[0] == 200  # kept alive across the reload
            accepted = socket.create_connection(("127.0.0.1", port))  # accepted, silent
            try:
                conf = proc.workdir / "upsync.conf"
                conf.write_text(text.replace("VERSION", "proxy_read_timeout 30s;"))
                proc.signal(signal.SIGHUP)
                log = proc.workdir / "error.log"
                wait_until(lambda: "configuration reloaded" in log.read_text())
                assert kept.get("/")[0] == 200
                accepted.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := accepted.recv(65536):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
            finally:
                kept.close()
                accepted.close()


@PROCESS_MODELS
def test_pipelined_requests_across_a_reload_are_all_answered(main: str) -> None:
    port = free_port()
    text = main + GOOD.replace("PORT", str(port))
    with running_upsync(text.replace("VERSION", "one"), port) as proc:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as old:
            old.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert old.recv(65536).endswith(b"one")
            (proc.workdir / "upsync.conf").write_text(text.replace("VERSION", "two"))
            proc.signal(signal.SIGHUP)
            log = proc.workdir / "error.log"
            wait_until(lambda: "configuration reloaded" in log.read_text())
            # past the drain window, in which each connection of the old configuration picks
            # its moment to close: a duration the behaviour sets, not a condition to poll
            time.sleep(DRAIN_WINDOW)
            # the connection from before the reload: what it sends is answered, on its own
            # configuration, and the last answer closes it
            old.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
            answers = b""
            while chunk := old.recv(65536):
                answers += chunk
        responses = answers.split(b"HTTP/1.1 200 OK")[1:]
        assert len(responses) == 3 and all(r.endswith(b"one") for r in responses)
        assert [b"Connection: close" in r for r in responses] == [False, False, True]
        assert request(port, "/")[2] == b"two"


def test_c_is_under_p_and_e_names_the_error_log(tmp_path: Path) -> None:
    """As nginx (and as nginx-tests' Test::Nginx calls it): `-p DIR -c nginx.conf -e error.log`
    reads DIR/nginx.conf and logs to DIR/error.log unless the configuration names a log."""
    port = free_port()
    (tmp_path / "nginx.conf").write_text(
        f"events {{}}\nhttp {{ server {{ listen 127.0.0.1:{port};"
        f" location / {{ proxy_pass http://127.0.0.1:{free_port()}; }} }} }}\n"
    )
    argv = [sys.executable, "-m", "upsync", "-p", f"{tmp_path}/", "-c", "nginx.conf"]
    argv += ["-e", "error.log", "-g", f"pid {tmp_path}/u.pid;"]
    process = Process(argv, port, tmp_path, "upsync").start()
    try:
        assert request(port, "/")[0] == 502  # nothing listens upstream: an error is logged
        wait_until(lambda: "connect() to 127.0.0.1" in (tmp_path / "error.log").read_text())
    finally:
        process.stop()
