"""What every upsync process does the same way, whatever its role (one process, master or
worker): the pid file, the open-file budget, settling the heap after building a configuration."""

import gc
import logging
import os
import resource
import sys

from upsync.config import Config

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


def settle_heap() -> None:
    """Move what start-up (or a reload) built, configuration, modules and tables that live as
    long as the process, out of the cyclic collector's reach: its older-generation passes would
    otherwise walk all of it again and again while requests come and go."""
    gc.collect()
    gc.freeze()


# descriptors beyond two per client connection (its upstream connection): listeners, log
# files, registry watches, the dump
SPARE_DESCRIPTORS = 64


def open_file_budget(config: Config) -> None:
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


def report_emerg(message: str) -> None:
    """A reason not to start: in the error log, and on stderr as nginx says it."""
    log.critical("%s", message)
    print(f"upsync: [emerg] {message}", file=sys.stderr)
