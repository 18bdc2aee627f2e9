"""The master process, as nginx's: it binds the listening sockets, follows every registry once for
the whole instance (and writes each dump, alone), and keeps `worker_processes` workers serving.
It answers the signals: SIGHUP starts workers on the new configuration and retires the old ones
once the new ones serve, SIGQUIT and SIGTERM end the workers gracefully or at once, SIGUSR1 has
them reopen their logs. A worker that dies is replaced.

The listening sockets stay open in the master for the instance's life, so a retiring worker that
stops accepting leaves the connections queued in the kernel to the workers that go on: no
SO_REUSEPORT socket (whose queue dies with it) is ever closed under load."""

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Coroutine
from typing import Any

from upsync.config import Config, load_config
from upsync.errors import ConfigError, StartupError
from upsync.generation import BindKey, bind_keys
from upsync.listeners import bind
from upsync.process import PidFile, report_emerg, settle_heap
from upsync.spawner import Spawner
from upsync.upstream.mirror import ListUpdate, SentLists
from upsync.upstream.sync import UpstreamSync
from upsync.upstream.upstreams import Upstreams
from upsync.wire import FrameReader, frame
from upsync.worker import RETIRE_IDLE_GRACE

log = logging.getLogger("upsync")

READY_TIMEOUT = 30.0  # a new worker that has not said it serves by then is taken for failed
STOP_TIMEOUT = 5.0  # SIGTERM: workers still there after it are killed
RESPAWN_PAUSE = 1.0  # before replacing a worker that died before it served: no tight crash loop


class Worker(asyncio.Protocol):
    """The master's end of one worker's channel, and what the master knows of that worker."""

    def __init__(self, master: "Master", generation: int) -> None:
        loop = asyncio.get_running_loop()
        self.master = master
        self.generation = generation
        self.pid = 0
        self.started = time.monotonic()
        self.retiring = False
        # while a start or reload waits for it: its failing then is that start's failure
        self.awaited = False
        self.acked: asyncio.Future[bool] | None = None  # an in-place reload, when applied
        self.ready: asyncio.Future[bool] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()
        self.reader = FrameReader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for message in self.reader.feed(data):
            if not isinstance(message, tuple):
                continue
            if message[0] == "ready":
                self.pid = int(message[1])
                log.info("start worker process %d", self.pid)
                if not self.ready.done():
                    self.ready.set_result(True)
            elif message[0] == "reloaded" and self.acked is not None and not self.acked.done():
                self.acked.set_result(bool(message[1]))
            elif message[0] == "resend":
                self.master.resend_list(self, str(message[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ready.done():
            self.ready.set_result(False)
        if self.acked is not None and not self.acked.done():
            self.acked.set_result(False)
        if not self.gone.done():
            self.gone.set_result(None)
        self.master.worker_gone(self)

    def send(self, message: object) -> None:
        self.write(frame(message))

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def retire(self, idle_grace: float) -> None:
        self.retiring = True
        self.send(("quit", idle_grace))

    def stop(self) -> None:
        self.retiring = True
        self.send(("stop",))
        self.kill(signal.SIGTERM)

    def kill(self, sig: int) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Master:
    def __init__(self, config: Config, args: argparse.Namespace, spawner: Spawner) -> None:
        self.loop = asyncio.get_running_loop()
        self.config = config
        self.args = args
        self.upstreams = Upstreams()
        self.sent = SentLists()
        self.broadcasts = 0  # a start built before the latest broadcast is stale
        self.listeners: dict[BindKey, socket.socket] = {}
        self.workers: set[Worker] = set()
        self.generation = 0
        self.spawner = spawner
        self.stopping = False
        self.reloading = False
        self.reload_again = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopped = asyncio.Event()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # what the syncs report goes to every worker
    def list_changed(self, sync: UpstreamSync) -> None:
        group = sync.group
        update = self.sent.change(group.name, group.specs())
        self._broadcast(("list", update, group.source, group.status()))

    def status_changed(self, sync: UpstreamSync) -> None:
        self._broadcast(("status", sync.group.name, sync.group.status()))

    def _whole_list(self, sync: UpstreamSync) -> tuple[ListUpdate, str, dict[str, object]] | None:
        update = self.sent.whole(sync.group.name)
        if update is None:
            return None
        return update, sync.group.source, sync.group.status()

    def resend_list(self, worker: Worker, upstream: str) -> None:
        for sync in self.upstreams.syncs():
            if sync.group.name == upstream:
                whole = self._whole_list(sync)
                if whole is not None:
                    worker.send(("list", *whole))

    def _broadcast(self, message: object) -> None:
        self.broadcasts += 1
        data = frame(message)
        for worker in self.workers:
            worker.write(data)

    def _follow(self, syncs: list[UpstreamSync]) -> None:
        for sync in syncs:
            sync.observer = self

    # starting
    async def prepare(self) -> list[UpstreamSync]:
        """Pull every registry once (StartupError if a strong dependency fails), then listen
        (OSError); returns the syncs to start with the workers."""
        syncs = self.upstreams.apply(self.config)
        self._follow(syncs)
        await asyncio.gather(*(sync.initial_load() for sync in syncs))
        self._bind(set(bind_keys(self.config)))
        return syncs

    async def start(self, syncs: list[UpstreamSync]) -> None:
        """Start the workers (StartupError if they fail), then follow the registries."""
        if not await self._start_workers(self.config, self.generation):
            raise StartupError("worker processes failed to start")
        for sync in syncs:
            sync.start()

    def _bind(self, keys: set[BindKey]) -> list[BindKey]:
        """Bind what is not bound yet; if one address fails, none of the new ones is kept."""
        new: dict[BindKey, socket.socket] = {}
        try:
            for key in keys - set(self.listeners):
                new[key] = bind(*key)
        except OSError:
            for sock in new.values():
                sock.close()
            raise
        self.listeners.update(new)
        return list(new)

    async def _start_workers(self, config: Config, generation: int) -> bool:
        count = config.main.worker_processes
        workers = await self._spawn_workers(config, generation, count)
        for worker in workers:
            worker.awaited = True
        done = await asyncio.gather(*(w.ready for w in workers))
        for worker in workers:
            worker.awaited = False
        if all(done):
            return True
        for worker in workers:
            worker.stop()
        return False

    async def _spawn_workers(self, config: Config, generation: int, count: int) -> list[Worker]:
        """Fork `count` workers and send them their start: the configuration and the current
        synced lists, pickled once for all of them unless a broadcast came between. A worker
        joins the broadcast in the same step as its start is written, so every list change
        reaches it after its start, as a change to the lists it holds."""
        keys = list(bind_keys(config))
        workers = []
        start, built_at = b"", -1
        for _ in range(count):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                fds = [theirs.fileno(), *(self.listeners[k].fileno() for k in keys)]
                self.spawner.fork_worker(fds)
            finally:
                theirs.close()
            ours.setblocking(False)
            _, worker = await self.loop.create_unix_connection(
                functools.partial(Worker, self, generation), sock=ours
            )
            if built_at != self.broadcasts:
                start, built_at = self._start_frame(config, keys), self.broadcasts
            worker.write(start)
            if not worker.gone.done():  # not dead already
                self.workers.add(worker)
            workers.append(worker)
            self.loop.call_later(READY_TIMEOUT, self._check_started, worker)
        return workers

    def _start_frame(self, config: Config, keys: list[BindKey]) -> bytes:
        lists = {}
        for sync in self.upstreams.syncs():
            whole = self._whole_list(sync)
            if whole is not None and sync.group.name in config.upstreams:
                lists[sync.group.name] = whole
        return frame(("init", {"config": config, "listen": keys, "lists": lists}))

    def _check_started(self, worker: Worker) -> None:
        if not worker.ready.done():
            log.error("a worker process did not start within %.0fs", READY_TIMEOUT)
            worker.ready.set_result(False)
            if worker.transport is not None:
                worker.transport.close()

    def worker_gone(self, worker: Worker) -> None:
        self.workers.discard(worker)
        if worker.pid:
            log.info("worker process %d exited", worker.pid)
        if (
            self.stopping
            or worker.retiring
            or worker.awaited
            or worker.generation != self.generation
        ):
            return
        served = worker.ready.done() and worker.ready.result()
        log.error("worker process %d exited unexpectedly; starting a new one", worker.pid)
        self.spawn(self._replace(served))

    async def _replace(self, served: bool) -> None:
        if not served:
            await asyncio.sleep(RESPAWN_PAUSE)
        if not self.stopping:
            await self._spawn_workers(self.config, self.generation, 1)

    # reloading
    async def reload(self) -> None:
        """Reloads run one at a time; signals that arrive meanwhile make one more."""
        if self.reloading:
            self.reload_again = True
            return
        self.reloading = True
        try:
            while True:
                self.reload_again = False
                await self._reload_once()
                if not self.reload_again or self.stopping:
                    break
        finally:
            self.reloading = False

    async def _reload_once(self) -> None:
        began = time.monotonic()
        try:
            config = load_config(
                self.args.config, self.args.prefix, self.args.globals, self.args.error_log
            )
        except ConfigError as exc:
            log.error("reload failed, the running configuration stays: %s", exc)
            return
        same_processes = config.main == self.config.main and set(bind_keys(config)) == set(
            bind_keys(self.config)
        )
        if same_processes:
            await self._reload_in_workers(config)
        elif not await self._replace_workers(config):
            return
        log.info(
            "configuration reloaded from %s (%.0f ms)",
            config.path,
            (time.monotonic() - began) * 1000,
        )

    async def _reload_in_workers(self, config: Config) -> None:
        """A reload that keeps the main context and the addresses: each worker makes the new
        configuration its current generation (as one process does), so no process is started
        and none stopped; its open connections finish on the old one as with a replacement."""
        generation = self.generation + 1
        workers = [w for w in self.workers if w.generation == self.generation and not w.retiring]
        message = frame(("reload", config))
        acks: list[asyncio.Future[bool]] = []
        for worker in workers:
            worker.acked = self.loop.create_future()
            acks.append(worker.acked)
            worker.write(message)
            worker.generation = generation
        # after the reload message: the lists of new syncs reach workers that know the upstream
        self._start_syncs(self.upstreams.apply(config))
        self.config, self.generation = config, generation
        if acks:
            await asyncio.wait(acks, timeout=READY_TIMEOUT)

    async def _replace_workers(self, config: Config) -> bool:
        """A reload that changes the main context or the addresses: new workers start on it,
        and the old ones retire once the new ones serve."""
        try:
            bound = self._bind(set(bind_keys(config)))
        except OSError as exc:
            log.error("reload failed to bind: %s", exc)
            return False
        previous = self.config
        self._start_syncs(self.upstreams.apply(config))
        generation = self.generation + 1
        started = await self._start_workers(config, generation)
        if self.stopping:
            return False  # stopped meanwhile: the new workers were stopped with the rest
        if not started:
            log.error("reload failed: new worker processes did not start; the old ones serve on")
            self._start_syncs(self.upstreams.apply(previous))
            for key in bound:
                self.listeners.pop(key).close()
            return False
        self.config, self.generation = config, generation
        for worker in list(self.workers):
            if worker.generation < generation:
                worker.retire(RETIRE_IDLE_GRACE)
        wanted = bind_keys(config)
        for key in [key for key in self.listeners if key not in wanted]:
            self.listeners.pop(key).close()
        return True

    def _start_syncs(self, syncs: list[UpstreamSync]) -> None:
        self._follow(syncs)
        for sync in syncs:
            sync.start_after_reload()

    # stopping
    def reopen(self) -> None:
        self._broadcast(("reopen",))

    async def quit(self) -> None:
        """SIGQUIT: every worker finishes what it has and exits, then the master."""
        self.stopping = True
        for worker in list(self.workers):
            worker.retire(0.0)
        await self._wait_workers(None)
        self.stopped.set()

    async def stop(self) -> None:
        """SIGTERM, SIGINT: workers stop at once (killed if still there after a while)."""
        self.stopping = True
        for worker in list(self.workers):
            worker.stop()
        if not await self._wait_workers(STOP_TIMEOUT):
            for worker in list(self.workers):
                worker.kill(signal.SIGKILL)
            await self._wait_workers(STOP_TIMEOUT)
        self.stopped.set()

    async def _wait_workers(self, timeout: float | None) -> bool:
        """Until every worker has exited: its channel closes as its loop ends, and the process
        (which still holds the listening sockets) is gone a moment later, so that an instance
        started right after this one ends can bind them."""
        pids = [worker.pid for worker in self.workers if worker.pid]
        pending = [worker.gone for worker in self.workers]
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            if still:
                return False
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(_exists(pid) for pid in pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return True

    async def close(self) -> None:
        await self.upstreams.close()
        for sock in self.listeners.values():
            sock.close()
        self.listeners.clear()
        self.spawner.close()


async def _give_up(master: Master, message: str) -> int:
    report_emerg(message)
    await master.stop()
    await master.close()
    return 1


async def serve_as_master(
    config: Config, args: argparse.Namespace, pid: PidFile, spawner: Spawner
) -> int:
    master = Master(config, args, spawner)
    loop = master.loop
    started = asyncio.Event()

    async def reload() -> None:
        await started.wait()  # a reload asked for during start-up follows it
        await master.reload()

    # signals are handled before anything listens: a signal in between would kill upsync
    loop.add_signal_handler(signal.SIGTERM, lambda: master.spawn(master.stop()))
    loop.add_signal_handler(signal.SIGINT, lambda: master.spawn(master.stop()))
    loop.add_signal_handler(signal.SIGQUIT, lambda: master.spawn(master.quit()))
    loop.add_signal_handler(signal.SIGHUP, lambda: master.spawn(reload()))
    loop.add_signal_handler(signal.SIGUSR1, master.reopen)
    try:
        syncs = await master.prepare()
    except OSError as exc:
        return await _give_up(master, f"bind() failed ({exc})")
    except StartupError as exc:
        return await _give_up(master, str(exc))
    # as nginx, the pid file is written once the addresses are bound, before the workers
    # start: a second instance started by mistake fails to bind and never touches it
    try:
        pid.write()
    except OSError as exc:
        return await _give_up(master, f'open() "{pid.path}" failed ({exc.strerror})')
    try:
        await master.start(syncs)
    except StartupError as exc:
        return await _give_up(master, str(exc))
    started.set()
    settle_heap()
    listening = ", ".join(f"{host or '0.0.0.0'}:{port}" for host, port in master.listeners)
    log.info(
        "upsync started, listening on %s: master %d, %d worker processes",
        listening,
        os.getpid(),
        config.main.worker_processes,
    )
    await master.stopped.wait()
    await master.close()
    log.info("upsync stopped")
    return 0
