"""Keeping one upstream in step with its registry: the one place snapshots are applied.

Start-up: pull once; if that fails, start from the dump (strong_dependency=off) or the static
`server` lines, or refuse to start (strong_dependency=on). Then follow the registry's watch for
good, surviving outages with capped backoff and logging each outage when it starts and ends.
"""

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from upsync.config.model import ServerSpec
from upsync.config.upsync import SyncSpec
from upsync.errors import StartupError
from upsync.sources.base import RegistryError, Source
from upsync.sources.entries import Snapshot, snapshot_from_server_lines
from upsync.sources.registry import make_source
from upsync.upstream.dump import read_dump, write_dump
from upsync.upstream.group import UpstreamGroup

log = logging.getLogger("upsync.sync")

STARTUP_PULL_TIMEOUT = 10.0
BACKOFF_CAP = 10.0
# the dump is written at most this often: under churn (a change every 100 ms) each write costs
# the master a thread hand-off, two fsyncs and a rename on the proxy's core, and a dump a second
# behind the registry starts the next run just as well; stopping writes the latest at once
DUMP_SPACING = 1.0


def backoff(interval: float, failures: int) -> float:
    """upsync_interval, doubling per failed round, capped at max(interval, 10s)."""
    delay: float = interval * 2.0 ** max(0, failures - 1)
    return min(delay, max(interval, BACKOFF_CAP))


class RetryPace:
    """How long to wait after a failed watch round: upsync_interval, doubling per failure in a
    row, back to upsync_interval once the registry has answered again (a short outage after a
    healthy hour waits as little as the first one did)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.failures = 0

    def answered(self) -> None:
        self.failures = 0

    def failed(self) -> float:
        self.failures += 1
        return backoff(self.interval, self.failures)


class SyncObserver(Protocol):
    """Told of what one sync changes: the master passes it on to its workers."""

    def list_changed(self, sync: "UpstreamSync") -> None: ...

    def status_changed(self, sync: "UpstreamSync") -> None: ...


class UpstreamSync:
    def __init__(self, group: UpstreamGroup, spec: SyncSpec) -> None:
        self.observer: SyncObserver | None = None
        self.group = group
        self.spec = spec
        self.source: Source = make_source(spec, group.name)
        self.task: asyncio.Task[None] | None = None
        self.reachable = True
        self.unreachable_since: float | None = None
        self.last_error = ""
        self.last_index = ""
        self.last_change: float | None = None
        self.reported: set[tuple[str, str]] = set()
        self.empty_warned = False
        self.changes = 0
        self.dump_dirty = False
        self.dump_task: asyncio.Future[None] | None = None
        self.dump_written_at = -DUMP_SPACING
        self.dump_now = asyncio.Event()
        self.pace = RetryPace(spec.interval)
        group.sync = self

    # start-up
    async def initial_load(self) -> None:
        try:
            snapshot = await asyncio.wait_for(
                self._pull(), min(self.spec.timeout, STARTUP_PULL_TIMEOUT)
            )
        except (RegistryError, TimeoutError) as exc:
            message = str(exc) or "timed out"
            if self.spec.strong_dependency:
                raise StartupError(
                    f'upstream "{self.group.name}": registry {self.source.where} unreachable '
                    f"({message}) and strong_dependency=on"
                ) from None
            self._outage(message)
            self.load_fallback()
            return
        self.apply(snapshot)
        if self.group.source != "registry":
            self.load_fallback()

    async def _pull(self) -> Snapshot:
        """One complete read: the first list the watch reports, each registry address in turn."""
        errors = []
        for _ in range(max(1, len(self.spec.endpoints))):
            first: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()

            def report(snapshot: Snapshot, first: asyncio.Future[Snapshot] = first) -> None:
                if not first.done():
                    first.set_result(snapshot)

            task: asyncio.Future[None] = asyncio.ensure_future(self.source.watch(report))
            try:
                pending: list[asyncio.Future[Any]] = [first, task]
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if first.done():
                    return first.result()
                task.result()
            except RegistryError as exc:
                errors.append(str(exc))
                self.source.next_endpoint()
            finally:
                task.cancel()
        raise RegistryError("; ".join(errors) or "no answer")

    def load_fallback(self) -> None:
        """The dump when there is one (and the upstream has not synced), else the static list."""
        text = read_dump(self.spec.dump_path)
        if text is not None:
            snapshot = snapshot_from_server_lines(text, self.spec.dump_path)
            if snapshot.servers:
                self.group.replace(snapshot.servers)
                self.group.source = "dump"
                log.warning(
                    'upstream "%s": using the dump %s (%d servers) until the registry answers',
                    self.group.name,
                    self.spec.dump_path,
                    len(snapshot.servers),
                )
                self._list_changed()
                return
        self.group.source = "static"
        if not self.group.peers:
            log.warning('upstream "%s" has no servers until the registry answers', self.group.name)
        self._list_changed()

    # following the registry
    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self._follow())

    def start_after_reload(self) -> None:
        """No blocking pull on reload: the dump (or static list) serves until the watch's first
        read, which comes at once."""
        self.load_fallback()
        self.start()

    async def stop(self) -> None:
        await self.flush_dump()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
            self.task = None
        await self.source.close()

    async def _follow(self) -> None:
        while True:
            self.source.start_round()
            try:
                await self.source.watch(self._on_snapshot)
                self.pace.answered()
            except RegistryError as exc:
                self._outage(str(exc))
                if self.source.next_endpoint():
                    continue  # another address of the registry may answer at once
                await asyncio.sleep(self.pace.failed())
            except Exception:
                log.exception('upstream "%s": registry watch failed', self.group.name)
                await asyncio.sleep(self.pace.failed())

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        self.pace.answered()
        self.apply(snapshot)

    def _outage(self, message: str) -> None:
        if self.reachable:
            self.reachable = False
            self.unreachable_since = time.time()
            log.error(
                'upstream "%s": registry %s unreachable (%s); serving the last list (%s)',
                self.group.name,
                self.source.where,
                message,
                self.group.source,
            )
        if message != self.last_error:
            self.last_error = message
            self._status_changed()

    def _recovered(self) -> None:
        if not self.reachable:
            down_for = time.time() - (self.unreachable_since or time.time())
            # logged at the level of the outage's start, so both show with the default error_log
            log.error(
                'upstream "%s": registry %s reachable again after %.1fs',
                self.group.name,
                self.source.where,
                down_for,
            )
        self.reachable = True
        self.unreachable_since = None
        self.last_error = ""

    # applying
    def apply(self, snapshot: Snapshot) -> None:
        """A registry answer becomes the server list, unless it has no usable server at all."""
        self._recovered()
        self.last_index = snapshot.index
        current = {peer.name: peer for peer in self.group.peers}
        listed = {spec.name for spec in snapshot.servers}
        specs: list[ServerSpec] = list(snapshot.servers)
        still_bad: set[tuple[str, str]] = set()
        for bad in snapshot.bad:
            report = (bad.key, bad.reason)
            still_bad.add(report)
            kept = bad.name is not None and bad.name in current and bad.name not in listed
            if report not in self.reported:
                log.error(
                    'upstream "%s": registry entry "%s" ignored: %s%s',
                    self.group.name,
                    bad.key,
                    bad.reason,
                    "; the server keeps its last good attributes" if kept else "",
                )
            if kept and bad.name is not None:
                specs.append(self.group.spec_of(bad.name))
                listed.add(bad.name)
        self.reported = still_bad
        if not specs:
            self._status_changed()
            if not self.empty_warned:
                log.warning(
                    'upstream "%s": the registry lists no servers; the last list (%d) stays',
                    self.group.name,
                    len(self.group.peers),
                )
                self.empty_warned = True
            return
        self.empty_warned = False
        from_registry = self.group.source == "registry"
        if not self.group.replace(specs, new_first=True) and from_registry:
            self._status_changed()
            return
        self.group.source = "registry"
        self.last_change = time.time()
        self.changes += 1
        self._list_changed()
        log.info(
            'upstream "%s": %d servers from %s', self.group.name, len(specs), self.source.where
        )
        self._schedule_dump()

    def _list_changed(self) -> None:
        if self.observer is not None:
            self.observer.list_changed(self)

    def _status_changed(self) -> None:
        if self.observer is not None:
            self.observer.status_changed(self)

    def _schedule_dump(self) -> None:
        """Write the dump in a thread, one write at a time, at most one per DUMP_SPACING, the
        latest list winning: routing never waits for the disk, and a burst of changes costs one
        or two writes."""
        self.dump_dirty = True
        if self.dump_task is None or self.dump_task.done():
            self.dump_task = asyncio.ensure_future(self._write_dumps())

    async def _write_dumps(self) -> None:
        loop = asyncio.get_running_loop()
        while self.dump_dirty:
            wait = self.dump_written_at + DUMP_SPACING - loop.time()
            if wait > 0 and not self.dump_now.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.dump_now.wait(), wait)
            self.dump_dirty = False
            self.dump_written_at = loop.time()
            specs = self.group.specs()
            try:
                await loop.run_in_executor(None, write_dump, self.spec.dump_path, specs)
            except OSError as exc:
                log.error(
                    'upstream "%s": cannot write the dump %s: %s',
                    self.group.name,
                    self.spec.dump_path,
                    exc,
                )

    async def flush_dump(self) -> None:
        if self.dump_task is not None:
            self.dump_now.set()
            await self.dump_task
            self.dump_now.clear()

    def status(self) -> dict[str, object]:
        return {
            "registry": {"type": self.spec.kind, "address": self.source.where},
            "reachable": self.reachable,
            "unreachable_since": self.unreachable_since,
            "last_error": self.last_error or None,
            "last_index": self.last_index or None,
            "last_change": self.last_change,
            "dump_path": self.spec.dump_path,
        }
