"""A watched file, or a directory of files, in the dump format (`upsync_type=file`).

The embedded default: with no registry at all, editing the file changes the upstream live.
"""

import asyncio
import os

import watchfiles

from upsync.config.model import ServerSpec
from upsync.sources.base import OnSnapshot, RegistryError, Source
from upsync.sources.entries import BadEntry, Snapshot, read_server_lines


def read_servers(path: str) -> Snapshot:
    try:
        if os.path.isdir(path):
            parts: list[ServerSpec] = []
            bad: list[BadEntry] = []
            for name in sorted(os.listdir(path)):
                full = os.path.join(path, name)
                if name.startswith(".") or not os.path.isfile(full):
                    continue
                with open(full, "rb") as handle:
                    snap = read_server_lines(handle.read(), full)
                parts.extend(snap.servers)
                bad.extend(snap.bad)
            return Snapshot(tuple(parts), "", tuple(bad))
        with open(path, "rb") as handle:
            return read_server_lines(handle.read(), path)
    except OSError as exc:
        raise RegistryError(f"cannot read {path}: {exc.strerror}") from None


class FileSource(Source):
    async def watch(self, on_snapshot: OnSnapshot) -> None:
        path = self.spec.path
        on_snapshot(read_servers(path))
        # watch the parent of a file: editors and `mv` replace files rather than write them
        target = path if os.path.isdir(path) else os.path.dirname(path) or "."
        if not os.path.exists(target):
            raise RegistryError(f"{target} does not exist")
        stop = asyncio.Event()
        ready = False
        async for changes in watchfiles.awatch(
            target, stop_event=stop, debounce=50, step=20, rust_timeout=1000, yield_on_timeout=True
        ):
            if not changes:  # a second without changes: the watch is surely in place
                if not ready:
                    # an edit made between the first read and the watch's start raised no
                    # event: read once more
                    ready = True
                    on_snapshot(read_servers(path))
                continue
            ready = True
            if os.path.isdir(path) or any(
                os.path.abspath(p) == os.path.abspath(path) for _, p in changes
            ):
                on_snapshot(read_servers(path))
        raise RegistryError(f"stopped watching {target}")
