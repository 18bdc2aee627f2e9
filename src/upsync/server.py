"""Running upsync in the foreground: as a master and its workers (nginx's default), or as one
process (`master_process off`): signals, the pid file, the event loop."""

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

import uvloop
from setproctitle import setproctitle

from upsync.app import App
from upsync.config import Config, load_config
from upsync.errors import ConfigError, StartupError
from upsync.logs import setup_error_log
from upsync.process import PidFile, open_file_budget, report_emerg, settle_heap

log = logging.getLogger("upsync")


async def _serve_alone(config: Config, args: argparse.Namespace, pid: PidFile) -> int:
    loop = asyncio.get_running_loop()
    app = App(config, loop)
    started = asyncio.Event()

    async def reload() -> None:
        await started.wait()  # a reload asked for during start-up follows it
        try:
            new_config = load_config(args.config, args.prefix, args.globals, args.error_log)
        except ConfigError as exc:
            log.error("reload failed, the running configuration stays: %s", exc)
            return
        try:
            await app.reload(new_config)
        except OSError as exc:
            log.error("reload failed to bind: %s", exc)
        gc.unfreeze()  # the replaced configuration may sit in cycles that only the collector frees
        settle_heap()

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
        report_emerg(f"bind() failed ({exc})")
        await app.close()
        return 1
    except StartupError as exc:
        report_emerg(str(exc))
        await app.close()
        return 1

    started.set()
    settle_heap()

    # the pid file names a running instance only once it listens and answers signals (as
    # nginx); an instance that fails to start never touches the file of the one that runs
    try:
        pid.write()
    except OSError as exc:
        report_emerg(f'open() "{pid.path}" failed ({exc.strerror})')
        app.shutdown()
        await app.close()
        return 1
    listening = ", ".join(f"{host or '0.0.0.0'}:{port}" for host, port in app.listeners)
    log.info("upsync started, listening on %s", listening)
    await app.stopped.wait()
    await app.close()
    log.info("upsync stopped")
    return 0


def run(config: Config, args: argparse.Namespace) -> int:
    setup_error_log(config.main.error_log, config.main.error_log_level)
    for notice in config.notices:
        log.info(notice)
    if config.main.daemon:
        log.info("daemon on: upsync stays in the foreground; run it under a service manager")
    pid = PidFile(config.main.pid)
    try:
        if config.main.master_process:
            from upsync.spawner import Spawner

            setproctitle(f"upsync: master process upsync {' '.join(sys.argv[1:])}")
            # forked before the event loop or any thread exists, and before the master loads
            # the registry clients: workers fork from a process holding only what they run
            spawner = Spawner()
            spawner.fork()
            from upsync.master import serve_as_master

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(serve_as_master(config, args, pid, spawner))
        open_file_budget(config)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_serve_alone(config, args, pid))
    finally:
        pid.remove()
