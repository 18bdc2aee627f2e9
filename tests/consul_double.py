"""A Consul HTTP API double: the parts upsync uses, with Consul's documented semantics.

No Consul server can be installed here, so the Consul tests talk to this double; they use only
Consul's public API, so they run unchanged against a real agent given CONSUL_HTTP_ADDR.

Followed from Consul's docs: KV reads with `recurse` (404 when nothing matches), base64 values,
blocking queries (`index` + `wait`, default 5m, capped at 10m, answered when the data's
X-Consul-Index moves past `index`), deletes advancing the index, catalog register/deregister,
/v1/catalog/service and /v1/health/service, ACL tokens (X-Consul-Token header or ?token=),
`dc`, and the `consistent`/`stale` flags (accepted).
"""

import base64
import contextlib
import json
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.helpers import free_port


@dataclass(frozen=True)
class TlsFiles:
    ca: str
    cert: str
    key: str


def make_certificates(directory: Path) -> tuple[TlsFiles, TlsFiles]:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=upsync test CA",
    )
    (directory / "ip.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-extfile",
            "ip.ext",
        )
    ca = str(directory / "ca.pem")
    return (
        TlsFiles(ca, str(directory / "server.pem"), str(directory / "server.key")),
        TlsFiles(ca, str(directory / "client.pem"), str(directory / "client.key")),
    )


MAX_WAIT = 600.0
DEFAULT_WAIT = 300.0


class ConsulState:
    def __init__(self, token: str | None = None) -> None:
        self.index = 1
        self.kv: dict[str, tuple[bytes, int, int]] = {}  # key -> (value, create, modify)
        self.tombstones: dict[str, int] = {}
        self.services: dict[str, dict[str, dict[str, Any]]] = {}  # name -> id -> registration
        self.service_index: dict[str, int] = {}
        self.token = token
        self.stopped = False
        self.changed = threading.Condition()
        self.requests: list[str] = []

    def bump(self) -> int:
        self.index += 1
        return self.index

    def kv_index(self, prefix: str, recurse: bool) -> int:
        def match(key: str) -> bool:
            return key.startswith(prefix) if recurse else key == prefix

        indexes = [entry[2] for key, entry in self.kv.items() if match(key)]
        indexes += [index for key, index in self.tombstones.items() if match(key)]
        return max(indexes, default=1)


class ConsulDouble:
    def __init__(
        self, token: str | None = None, port: int | None = None, tls: "TlsFiles | None" = None
    ) -> None:
        self.tls = tls
        self.port = port or free_port()
        self.state = ConsulState(token)
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ConsulDouble":
        state = self.state
        state.stopped = False

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _reply(self, status: int, payload: Any, index: int | None = None) -> None:
                body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if index is not None:
                    self.send_header("X-Consul-Index", str(index))
                    self.send_header("X-Consul-KnownLeader", "true")
                self.end_headers()
                self.wfile.write(body)

            def _query(self) -> tuple[str, dict[str, list[str]]]:
                parts = urlsplit(self.path)
                return parts.path, parse_qs(parts.query, keep_blank_values=True)

            def _authorized(self, query: dict[str, list[str]]) -> bool:
                if state.token is None:
                    return True
                given = self.headers.get("X-Consul-Token") or query.get("token", [""])[0]
                return given == state.token

            def _block(self, query: dict[str, list[str]], current: Any) -> None:
                """A blocking query: wait while the index is still the one the client has."""
                if "index" not in query:
                    return
                wanted = int(query["index"][0] or 0)
                wait = _seconds(query.get("wait", [""])[0]) or DEFAULT_WAIT
                deadline = time.monotonic() + min(wait, MAX_WAIT)
                with state.changed:
                    while current() <= wanted:
                        if state.stopped:
                            raise ConnectionAbortedError("the double is stopping")
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return
                        state.changed.wait(remaining)

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (ConnectionAbortedError, BrokenPipeError, ConnectionResetError):
                    # a stopping agent drops its blocking queries, as a killed Consul would
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(2)

            def do_GET(self) -> None:
                path, query = self._query()
                state.requests.append(self.path)
                if not self._authorized(query):
                    self._reply(403, b"Permission denied")
                    return
                if query.get("dc", ["dc1"])[0] != "dc1":
                    self._reply(500, b"No path to datacenter")
                    return
                if path.startswith("/v1/kv/"):
                    key = path[len("/v1/kv/") :]
                    recurse = "recurse" in query
                    self._block(query, lambda: state.kv_index(key, recurse))
                    with state.changed:
                        index = state.kv_index(key, recurse)
                        found = [
                            {
                                "Key": k,
                                "Value": base64.b64encode(v).decode() if v else None,
                                "CreateIndex": c,
                                "ModifyIndex": m,
                                "LockIndex": 0,
                                "Flags": 0,
                            }
                            for k, (v, c, m) in sorted(state.kv.items())
                            if (k.startswith(key) if recurse else k == key)
                        ]
                    self._reply(200 if found else 404, found if found else b"", index)
                elif path.startswith(("/v1/catalog/service/", "/v1/health/service/")):
                    name = path.rsplit("/", 1)[1]
                    self._block(query, lambda: state.service_index.get(name, 1))
                    with state.changed:
                        index = state.service_index.get(name, 1)
                        entries = list(state.services.get(name, {}).values())
                    if path.startswith("/v1/catalog/"):
                        self._reply(200, [_catalog_entry(e) for e in entries], index)
                    else:
                        self._reply(200, [_health_entry(e) for e in entries], index)
                else:
                    self._reply(404, b"")

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def do_PUT(self) -> None:
                path, query = self._query()
                body = self._body()
                if not self._authorized(query):
                    self._reply(403, b"Permission denied")
                    return
                with state.changed:
                    if path.startswith("/v1/kv/"):
                        key = path[len("/v1/kv/") :]
                        index = state.bump()
                        created = state.kv.get(key, (b"", index, 0))[1]
                        state.kv[key] = (body, created, index)
                        state.tombstones.pop(key, None)
                        reply: Any = True
                    elif path == "/v1/catalog/register":
                        registration = json.loads(body)
                        service = registration["Service"]
                        name = service["Service"]
                        service_id = service.get("ID") or name
                        state.services.setdefault(name, {})[service_id] = registration
                        state.service_index[name] = state.bump()
                        reply = True
                    elif path == "/v1/catalog/deregister":
                        registration = json.loads(body)
                        for name, instances in state.services.items():
                            if instances.pop(registration.get("ServiceID", ""), None) is not None:
                                state.service_index[name] = state.bump()
                        reply = True
                    else:
                        self._reply(404, b"")
                        return
                    state.changed.notify_all()
                self._reply(200, reply)

            def do_DELETE(self) -> None:
                path, query = self._query()
                self._body()
                if not self._authorized(query):
                    self._reply(403, b"Permission denied")
                    return
                key = path[len("/v1/kv/") :]
                with state.changed:
                    doomed = [
                        k
                        for k in state.kv
                        if (k.startswith(key) if "recurse" in query else k == key)
                    ]
                    if doomed:
                        index = state.bump()
                        for k in doomed:
                            del state.kv[k]
                            state.tombstones[k] = index
                    state.changed.notify_all()
                self._reply(200, True)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            # https with client certificates required, as an agent with verify_incoming does
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.tls.ca)
            context.load_cert_chain(self.tls.cert, self.tls.key)
            context.verify_mode = ssl.CERT_REQUIRED
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            with self.state.changed:
                self.state.stopped = True
                self.state.changed.notify_all()
            self.server.shutdown()
            self.server.server_close()
            with self.state.changed:
                self.state.changed.notify_all()
            assert self.thread is not None
            self.thread.join(5)
            self.server = None


def register_service(
    agent: str,
    name: str,
    service_id: str,
    port: int,
    tags: list[str] | None = None,
    address: str = "127.0.0.1",
    status: str = "passing",
    token: str | None = None,
) -> None:
    """`PUT /v1/catalog/register`, as `consul services register` does: works on a real agent too."""
    from tests.registries import http

    registration = {
        "Node": "upsync-test-node",
        "Address": "127.0.0.1",
        "Service": {
            "ID": service_id,
            "Service": name,
            "Address": address,
            "Port": port,
            "Tags": tags or [],
        },
        "Checks": [
            {
                "CheckID": f"check-{service_id}",
                "ServiceID": service_id,
                "Name": "test",
                "Status": status,
            }
        ],
    }
    headers = {"X-Consul-Token": token} if token else {}
    status_code, body = http(
        "PUT", f"http://{agent}/v1/catalog/register", json.dumps(registration).encode(), headers
    )
    assert status_code == 200, body


def _seconds(value: str) -> float:
    if not value:
        return 0.0
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * units[unit]
    return float(value)


def _catalog_entry(registration: dict[str, Any]) -> dict[str, Any]:
    service = registration["Service"]
    return {
        "Node": registration["Node"],
        "Address": registration["Address"],
        "ServiceID": service.get("ID"),
        "ServiceName": service["Service"],
        "ServiceAddress": service.get("Address", ""),
        "ServicePort": service["Port"],
        "ServiceTags": service.get("Tags") or [],
    }


def _health_entry(registration: dict[str, Any]) -> dict[str, Any]:
    service = registration["Service"]
    return {
        "Node": {"Node": registration["Node"], "Address": registration["Address"]},
        "Service": {
            "ID": service.get("ID"),
            "Service": service["Service"],
            "Address": service.get("Address", ""),
            "Port": service["Port"],
            "Tags": service.get("Tags") or [],
        },
        "Checks": [
            {"CheckID": c.get("CheckID"), "Status": c.get("Status", "passing")}
            for c in registration.get("Checks") or []
        ],
    }
