"""etcd's v3 API through its JSON gateway (`upsync_type=etcdv3`): what etcd 3.6 serves.

Range-read the key prefix, then stream `/v3/watch` from the next revision and keep the list up to
date from its events. A compaction or a lost stream reads the prefix again. (FINDINGS: no
maintained asyncio v3 client survives etcd restarts and compactions; the gateway does.)
"""

import base64
from typing import Any

import aiohttp
import orjson

from upsync.config.upsync import SyncSpec
from upsync.sources.base import HttpSource, OnSnapshot, RegistryError, stream_lines
from upsync.sources.entries import EntryParser, Snapshot


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prefix_range(prefix: str) -> tuple[str, str]:
    """The key and range_end that select every key under a prefix, base64 as the gateway wants."""
    raw = prefix.encode()
    end = bytearray(raw)
    while end and end[-1] == 0xFF:
        end.pop()
    if end:
        end[-1] += 1
    return _b64(raw), _b64(bytes(end) if end else b"\0")


def kv_pairs(kvs: list[dict[str, Any]], prefix: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for kv in kvs:
        key = base64.b64decode(kv.get("key", "")).decode("utf-8", "replace")
        out[key[len(prefix) :]] = base64.b64decode(kv.get("value", ""))
    return out


class EtcdV3Source(HttpSource):
    def __init__(self, spec: SyncSpec, upstream: str) -> None:
        super().__init__(spec, upstream)
        self.parser = EntryParser()

    def snapshot_of(self, entries: dict[str, bytes], revision: int) -> Snapshot:
        # key order: the range read's (sorted), then new keys as they arrive
        pairs: list[tuple[str, bytes | str | None]] = list(entries.items())
        return self.parser.snapshot(pairs, str(revision))

    @property
    def prefix(self) -> str:
        return self.spec.path.lstrip("/")

    async def read(self) -> tuple[dict[str, bytes], int]:
        key, range_end = prefix_range(self.prefix)
        status, _, body = await self.request(
            "POST",
            "/v3/kv/range",
            json={"key": key, "range_end": range_end},
            timeout=self.spec.timeout,
        )
        if status != 200:
            raise RegistryError(f"etcd answered the range read with {status}: {body[:200]!r}")
        answer = orjson.loads(body)
        revision = int(answer.get("header", {}).get("revision", 0))
        return kv_pairs(answer.get("kvs") or [], self.prefix), revision

    async def watch(self, on_snapshot: OnSnapshot) -> None:
        while True:
            entries, revision = await self.read()
            on_snapshot(self.snapshot_of(entries, revision))
            await self._follow(entries, revision, on_snapshot)

    async def _follow(
        self, entries: dict[str, bytes], revision: int, on_snapshot: OnSnapshot
    ) -> None:
        """Apply watch events until the stream ends or etcd cancels it (compaction)."""
        key, range_end = prefix_range(self.prefix)
        request = {
            "create_request": {
                "key": key,
                "range_end": range_end,
                "start_revision": str(revision + 1),
            }
        }
        try:
            async with self.session().post(
                self.url("/v3/watch"),
                json=request,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=self.spec.timeout),
            ) as response:
                if response.status != 200:
                    raise RegistryError(f"etcd refused the watch with {response.status}")
                async for line in stream_lines(response.content, self.where):
                    result = orjson.loads(line).get("result")
                    if result is None:
                        raise RegistryError(f"etcd watch error: {line[:200]!r}")
                    if result.get("canceled") or result.get("compact_revision"):
                        return  # compacted past our revision: read everything again
                    events = result.get("events")
                    if not events:
                        continue
                    for event in events:
                        kv = event.get("kv", {})
                        name = base64.b64decode(kv.get("key", "")).decode("utf-8", "replace")[
                            len(self.prefix) :
                        ]
                        if event.get("type") == "DELETE":
                            entries.pop(name, None)
                        else:  # PUT is the enum's zero value, so the gateway leaves "type" out
                            entries[name] = base64.b64decode(kv.get("value", ""))
                        revision = max(revision, int(kv.get("mod_revision", revision)))
                    on_snapshot(self.snapshot_of(entries, revision))
                raise RegistryError(f"{self.where}: the watch stream ended")
        except TimeoutError:
            return  # nothing for upsync_timeout: start over quietly with a fresh read
        except aiohttp.ClientError as exc:
            raise RegistryError(f"{self.where}: {exc or type(exc).__name__}") from exc
