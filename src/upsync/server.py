"""Running upsync in the foreground: pid file, signals, the event loop."""

import argparse
import asyncio
import gc
import logging
import os
import resource
import signal
import sys
from collections.abc import Coroutine
from typing import Any

import uvloop

from upsync.app import App
from upsync.config import Config, load_config
from upsync.errors import ConfigError
from upsync.logs import setup_error_log
from upsync.upstream.sync import StartupError

log = logging.getLogger("upsync")


class PidFile:
    """The pid file this process wrote, if it wrote one: only that is ever removed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = False

    def write(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        os.replace(tmp, self.path)
        self.written = True

    def remove(self) -> None:
        if not self.written:
            return
        try:
            with open(self.path) as handle:
                if handle.read().strip() == str(os.getpid()):
                    os.unlink(self.path)
        except OSError:
            pass


def _settle_heap() -> None:
    """Move what start-up (or a reload) built, configuration, modules and tables that live as
    long as the process, out of the cyclic collector's reach: its older-generation passes would
    otherwise walk all of it again and again while requests come and go."""
    gc.collect()
    gc.freeze()


async def _serve(config: Config, args: argparse.Namespace, pid: "PidFile") -> int:
    loop = asyncio.get_running_loop()
    app = App(config, loop)
    started = asyncio.Event()

    async def reload() -> None:
        await started.wait()  # a reload asked for during start-up follows it
        try:
            new_config = load_config(args.config, args.prefix, args.globals)
        except ConfigError as exc:
            log.error("reload failed, the running configuration stays: %s", exc)
            return
        try:
            await app.reload(new_config)
        except OSError as exc:
            log.error("reload failed to bind: %s", exc)
        gc.unfreeze()  # the replaced configuration may sit in cycles that only the collector frees
        _settle_heap()

    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Coroutine[Any, Any, None]) -> None:
        task = loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    # signals are handled before anything listens: a signal in between would kill upsync
    loop.add_signal_handler(signal.SIGTERM, app.shutdown)
    loop.add_signal_handler(signal.SIGINT, app.shutdown)
    loop.add_signal_handler(signal.SIGQUIT, lambda: spawn(app.quit_gracefully()))
    loop.add_signal_handler(signal.SIGHUP, lambda: spawn(reload()))
    loop.add_signal_handler(signal.SIGUSR1, app.access_logs.close)
    try:
        await app.start()
    except OSError as exc:
        log.critical("bind() failed (%s)", exc)
        print(f"upsync: [emerg] bind() failed ({exc})", file=sys.stderr)
        await app.close()
        return 1
    except StartupError as exc:
        log.critical("%s", exc)
        print(f"upsync: [emerg] {exc}", file=sys.stderr)
        await app.close()
        return 1

    started.set()
    _settle_heap()

    # the pid file names a running instance only once it listens and answers signals (as
    # nginx); an instance that fails to start never touches the file of the one that runs
    try:
        pid.write()
    except OSError as exc:
        print(f'upsync: [emerg] open() "{pid.path}" failed ({exc.strerror})', file=sys.stderr)
        app.shutdown()
        await app.close()
        return 1
    listening = ", ".join(f"{host or '0.0.0.0'}:{port}" for host, port in app.listeners)
    log.info("upsync started, listening on %s", listening)
    await app.stopped.wait()
    await app.close()
    log.info("upsync stopped")
    return 0


# descriptors beyond two per client connection (its upstream connection): listeners, log
# files, registry watches, the dump
SPARE_DESCRIPTORS = 64


def _open_file_budget(config: Config) -> None:
    """worker_rlimit_nofile as nginx sets it; without it, the soft limit is raised (up to the
    hard one) to what worker_connections needs, so the limit upsync enforces is reached before
    the kernel's and running out of descriptors is never mistaken for failing upstreams."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = config.main.worker_rlimit_nofile or max(
        soft, 2 * config.main.worker_connections + SPARE_DESCRIPTORS
    )
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("setrlimit(RLIMIT_NOFILE, %d) failed (%s)", wanted, exc)
    needed = 2 * config.main.worker_connections + SPARE_DESCRIPTORS
    if soft < needed:
        log.warning(
            "%d worker_connections exceed open file resource limit: %d",
            config.main.worker_connections,
            soft,
        )


def run(config: Config, args: argparse.Namespace) -> int:
    setup_error_log(config.main.error_log, config.main.error_log_level)
    _open_file_budget(config)
    for notice in config.notices:
        log.info(notice)
    if config.main.worker_processes > 1:
        log.warning(
            "worker_processes %d: upsync runs one process for now", config.main.worker_processes
        )
    if config.main.daemon:
        log.info("daemon on: upsync stays in the foreground; run it under a service manager")
    pid = PidFile(config.main.pid)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_serve(config, args, pid))
    finally:
        pid.remove()
