"""etcd's v2 keys API (`upsync_type=etcd`), as the seed uses it.

Read the directory, then long-poll `?wait=true&recursive=true&waitIndex=N`; each change re-reads
the directory so every report is a complete list. When etcd has forgotten the index (error 401,
"event index cleared"), the directory is simply read again.
"""

import asyncio
import logging
from typing import Any

import orjson

from upsync.config.upsync import SyncSpec
from upsync.sources.base import HttpSource, OnSnapshot, PollTimeout, RegistryError
from upsync.sources.entries import EntryParser, Snapshot

log = logging.getLogger("upsync.sync")

EVENT_INDEX_CLEARED = 401
KEY_NOT_FOUND = 100


def parse_directory(
    body: bytes, status: int, etcd_index: str, parser: EntryParser | None = None
) -> Snapshot:
    """A `GET /v2/keys/DIR?recursive=true` answer into a Snapshot (pure)."""
    try:
        answer: dict[str, Any] = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RegistryError(f"etcd answered something that is not JSON ({exc})") from None
    if status == 404 and answer.get("errorCode") == KEY_NOT_FOUND:
        return Snapshot((), etcd_index)
    if status != 200:
        detail = answer.get("message") or body[:200].decode("utf-8", "replace")
        raise RegistryError(f"etcd answered {status}: {detail}")
    node = answer.get("node") or {}
    if not node.get("dir"):
        raise RegistryError(f"{node.get('key')} is a key, not a directory")
    prefix = str(node.get("key", "")).rstrip("/") + "/"
    pairs: list[tuple[str, bytes | str | None]] = []
    for child in node.get("nodes") or ():
        key = str(child.get("key", ""))
        name = key[len(prefix) :] if key.startswith(prefix) else key
        if child.get("dir"):
            name += "/"
        pairs.append((name, child.get("value")))
    return (parser or EntryParser()).snapshot(pairs, etcd_index)


class EtcdV2Source(HttpSource):
    def __init__(self, spec: SyncSpec, upstream: str) -> None:
        super().__init__(spec, upstream)
        self.parser = EntryParser()

    async def read(self) -> Snapshot:
        status, headers, body = await self.request(
            # v2 lists a directory in no fixed order; sorted by key, as v3 and Consul list them,
            # the server list and the dump stay the same from one read to the next
            "GET",
            self.spec.path,
            params={"recursive": "true", "sorted": "true"},
            timeout=self.spec.timeout,
        )
        return parse_directory(body, status, headers.get("X-Etcd-Index", ""), self.parser)

    async def watch(self, on_snapshot: OnSnapshot) -> None:
        snapshot = await self.read()
        on_snapshot(snapshot)
        index = int(snapshot.index or 0)
        while True:
            params = {"wait": "true", "recursive": "true", "waitIndex": str(index + 1)}
            try:
                status, _headers, body = await self.request(
                    "GET", self.spec.path, params=params, timeout=self.spec.timeout
                )
            except PollTimeout:
                continue  # etcd v2 waits have no server-side end: ask again
            if status == 400:
                try:
                    error_code = orjson.loads(body).get("errorCode")
                except orjson.JSONDecodeError:
                    error_code = None
                if error_code != EVENT_INDEX_CLEARED:
                    raise RegistryError(f"etcd refused the watch: {body[:200]!r}")
                log.info(
                    'upstream "%s": etcd index %d was cleared (etcd keeps 1000 events); '
                    "reading %s again",
                    self.upstream,
                    index + 1,
                    self.where,
                )
            elif status != 200:
                raise RegistryError(f"etcd answered the watch with {status}: {body[:200]!r}")
            # a change (or a forgotten index): read the whole directory again
            snapshot = await self.read()
            on_snapshot(snapshot)
            if not snapshot.index:
                # no X-Etcd-Index to wait from: pace the reads instead of spinning
                await asyncio.sleep(self.spec.interval)
            index = max(index, int(snapshot.index or 0))
