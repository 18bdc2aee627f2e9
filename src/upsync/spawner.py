"""The master's spawner: a process that has imported everything a worker runs and forks a
worker on request. A fork costs a millisecond where starting a Python process and importing
upsync costs half a second of CPU; and forking here, never in the master, keeps the master's
event loop, registry connections and threads out of every worker. The master forks the first
spawner before its own loop starts; a replacement is started as `python -m upsync.spawner FD`.

Each request is one datagram on a SOCK_SEQPACKET socket carrying the descriptors the worker
needs: its channel to the master first, then the listening sockets. The master learns the
worker's pid from the worker itself; the spawner only forks and reaps."""

import gc
import logging
import os
import signal
import socket
import sys
import time
import traceback

from setproctitle import setproctitle

from upsync import worker

MAX_DESCRIPTORS = 253  # SCM_RIGHTS' limit per message
REAP_TIMEOUT = 5.0  # a spawner told to end (its socket closed) that lingers is killed
SIGNALS_TO_IGNORE = (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)


def _run_worker(fds: list[int]) -> None:
    for sig in (*SIGNALS_TO_IGNORE, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    code = 1
    try:
        code = worker.main(fds[0], fds[1:])
    except BaseException:  # a worker ends here, never back in the spawner's loop
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def serve(control: socket.socket) -> None:
    setproctitle("upsync: worker spawner")
    # the master decides when the spawner ends: by closing the socket (or by dying)
    for sig in SIGNALS_TO_IGNORE:
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the workers
    gc.collect()
    gc.freeze()  # forked workers share these pages instead of copying them on first touch
    while True:
        message, fds, _, _ = socket.recv_fds(control, 16, MAX_DESCRIPTORS)
        if not message:
            return
        if os.fork() == 0:
            control.close()
            _run_worker(fds)
        for fd in fds:
            os.close(fd)


class Spawner:
    """The process that forks the workers (see upsync.spawner). The first is forked from the
    master before its event loop or any thread exists, so it starts with everything imported;
    one that dies is replaced by a fresh interpreter, since the master can no longer fork
    safely once its loop runs."""

    def __init__(self) -> None:
        self.pid = 0
        self.control: socket.socket | None = None

    def fork(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            code = 1
            try:
                serve(theirs)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        self.pid, self.control = pid, ours

    def _start_fresh(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.set_inheritable(True)
        argv = [sys.executable, "-m", "upsync.spawner", str(theirs.fileno())]
        self.pid = os.posix_spawn(sys.executable, argv, os.environ)
        theirs.close()
        self.control = ours
        return ours

    def fork_worker(self, fds: list[int]) -> None:
        control = self.control or self._start_fresh()
        try:
            socket.send_fds(control, [b"w"], fds)
        except OSError as exc:
            logging.getLogger("upsync").error(
                "the worker spawner is gone (%s); starting another", exc
            )
            self.close()
            socket.send_fds(self._start_fresh(), [b"w"], fds)

    def close(self) -> None:
        """Closing its socket ends it; it is reaped here (killed if it lingers)."""
        if self.control is not None:
            self.control.close()
            self.control = None
        if not self.pid:
            return
        deadline = time.monotonic() + REAP_TIMEOUT
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.01)  # its exit follows the socket's close within milliseconds
        self.pid = 0


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
