"""Consul: KV (`consul`), catalog services (`consul_services`) and health (`consul_health`).

Each is a blocking query: `?index=N&wait=W` returns when the data's X-Consul-Index moves past N
or W elapses. Per Consul's documentation the index is only compared for equality, reset to 0 when
it goes backwards and never below 1 once known.
"""

import asyncio
import base64
from typing import Any

import orjson

from upsync.config.model import ServerSpec
from upsync.config.servers import format_name
from upsync.config.upsync import SyncSpec
from upsync.sources.base import HttpSource, OnSnapshot, RegistryError
from upsync.sources.entries import BadEntry, EntryParser, Snapshot, spec_from_tags

CONSUL_MAX_WAIT = 300.0  # Consul caps a blocking query at 10 minutes; 5 is its default


def next_index(previous: int, header: str | None) -> int:
    """The index for the next blocking query, with Consul's documented sanity rules."""
    try:
        index = int(header or 0)
    except ValueError:
        return 0
    if index < previous:
        return 0  # the index went backwards (a snapshot restore, a new leader): start over
    return max(index, 1) if header else 0


def parse_kv(
    body: bytes, status: int, directory: str, index: str, parser: EntryParser | None = None
) -> Snapshot:
    if status == 404:
        return Snapshot((), index)
    if status != 200:
        raise RegistryError(f"Consul answered {status}: {body[:200]!r}")
    pairs: list[tuple[str, bytes | str | None]] = []
    for entry in orjson.loads(body) or ():
        key = str(entry.get("Key", ""))
        if not key.startswith(directory):
            continue
        name = key[len(directory) :]
        if not name:
            continue  # the folder key itself
        value = entry.get("Value")
        pairs.append((name, base64.b64decode(value) if value else None))
    return (parser or EntryParser()).snapshot(pairs, index)


def _service_spec(
    host: str, port: Any, tags: list[str], down: bool, key: str
) -> ServerSpec | BadEntry:
    if not host or not isinstance(port, int) or not 0 < port < 65536:
        return BadEntry(key, f"no usable address ({host!r}, port {port!r})")
    try:
        return spec_from_tags(host, port, tags or [], down)
    except ValueError as exc:
        return BadEntry(key, str(exc), format_name(host, port))


def _snapshot(results: list[ServerSpec | BadEntry], index: str) -> Snapshot:
    servers: list[ServerSpec] = []
    bad: list[BadEntry] = []
    seen: set[str] = set()
    for result in results:
        if isinstance(result, BadEntry):
            bad.append(result)
        elif result.name not in seen:
            seen.add(result.name)
            servers.append(result)
    return Snapshot(tuple(servers), index, tuple(bad))


def parse_catalog(body: bytes, status: int, index: str) -> Snapshot:
    if status != 200:
        raise RegistryError(f"Consul answered {status}: {body[:200]!r}")
    results = []
    for entry in orjson.loads(body) or ():
        host = entry.get("ServiceAddress") or entry.get("Address") or ""
        key = str(entry.get("ServiceID") or entry.get("Node") or host)
        results.append(
            _service_spec(
                host, entry.get("ServicePort"), entry.get("ServiceTags") or [], False, key
            )
        )
    return _snapshot(results, index)


def parse_health(body: bytes, status: int, index: str) -> Snapshot:
    if status != 200:
        raise RegistryError(f"Consul answered {status}: {body[:200]!r}")
    results = []
    for entry in orjson.loads(body) or ():
        service = entry.get("Service") or {}
        node = entry.get("Node") or {}
        host = service.get("Address") or node.get("Address") or ""
        critical = any(check.get("Status") == "critical" for check in entry.get("Checks") or ())
        key = str(service.get("ID") or host)
        results.append(
            _service_spec(host, service.get("Port"), service.get("Tags") or [], critical, key)
        )
    return _snapshot(results, index)


class ConsulSource(HttpSource):
    def __init__(self, spec: SyncSpec, upstream: str) -> None:
        super().__init__(spec, upstream)
        self.parser = EntryParser()

    def headers(self) -> dict[str, str]:
        return {"X-Consul-Token": self.spec.token} if self.spec.token else {}

    @property
    def directory(self) -> str:
        # "/v1/kv/upstreams/test" → keys under "upstreams/test/"
        return self.spec.path.removeprefix("/v1/kv/").strip("/") + "/"

    def _params(self, index: int, wait: float) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.spec.kind == "consul":
            params["recurse"] = ""
        if index:
            params["index"] = str(index)
            params["wait"] = f"{int(wait)}s"
        if self.spec.datacenter:
            params["dc"] = self.spec.datacenter
        if self.spec.consistency:
            params[self.spec.consistency] = ""
        return params

    def _path(self) -> str:
        if self.spec.kind == "consul":
            return "/v1/kv/" + self.directory
        return self.spec.path

    def _parse(self, body: bytes, status: int, index: str) -> Snapshot:
        if self.spec.kind == "consul":
            return parse_kv(body, status, self.directory, index, self.parser)
        if self.spec.kind == "consul_health":
            return parse_health(body, status, index)
        return parse_catalog(body, status, index)

    async def watch(self, on_snapshot: OnSnapshot) -> None:
        # the blocking wait stays below the request timeout, as Consul's docs require
        wait = max(1.0, min(CONSUL_MAX_WAIT, self.spec.timeout - max(1.0, self.spec.timeout / 16)))
        index = 0
        last_reported: str | None = None
        while True:
            status, headers, body = await self.request(
                "GET", self._path(), params=self._params(index, wait), timeout=wait + wait / 16 + 5
            )
            if status in (401, 403):
                raise RegistryError(f"Consul refused the ACL token ({status}): {body[:200]!r}")
            header = headers.get("X-Consul-Index")
            snapshot = self._parse(body, status, header or "")
            new_index = next_index(index, header)
            if header != last_reported or index == 0:
                on_snapshot(snapshot)
                last_reported = header
            index = new_index
            if index == 0:
                # no usable X-Consul-Index: the next query would not block, so pace it
                await asyncio.sleep(self.spec.interval)
